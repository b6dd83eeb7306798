//! Name server: Raft-replicated namespace, guard entries, cluster map (DESIGN §1, §4). Not built yet (issue 3).
