//! Object server: partitions, GC entries, erasure-coded data log (DESIGN §5). Not built yet (issue 4).
