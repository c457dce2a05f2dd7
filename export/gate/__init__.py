"""The parity gate: the tolerance table, the comparator, and which runners judge an artifact."""
