"""Version control over a node's data dir: what `potluck show`, `diff`, `blame` and `verify` read.

repo     the committed history, versions, held updates and manifest of a data dir; naming a version;
         the updates a commit merged and the weights the merge gave them (probation included)
numbers  per-tensor numbers of a change (diff) and who moved what (blame)
replay   `verify`: history replayed from genesis, every signature, quorum, update and merge rechecked

Everything here reads; nothing writes the data dir, so it runs beside a running node.
"""
