"""Version control over a node's data dir: what `potluck show`, `diff`, `blame`, `verify` and `gc` use.

repo     the committed history, versions, held updates and manifest of a data dir; naming a version;
         the updates a commit merged and the weights the merge gave them (probation included)
numbers  per-tensor numbers of a change (diff) and who moved what (blame)
replay   `verify`: history replayed from genesis, every signature, quorum, update and merge rechecked
gc       `gc`: which stored versions to drop, rewriting kept patches whose parent goes

All but gc only read, so they run beside a running node; gc takes the data dir's lock to write.
"""
