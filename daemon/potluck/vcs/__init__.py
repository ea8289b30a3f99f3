"""Version control over a node's data dir: what `potluck show`, `diff`, `blame`, `verify`, `gc`, `revert`
and `export --to` use.

repo     the committed history, versions, held updates and manifest of a data dir; naming a version;
         the updates a commit merged and the weights the merge gave them (probation included)
numbers  per-tensor numbers of a change (diff) and who moved what (blame)
replay   `verify`: history replayed from genesis, every signature, quorum, update and merge rechecked
gc       `gc`: which stored versions to drop, rewriting kept patches whose parent goes
revert   `revert`: the signed proposal, who may revert, and the step that takes merged updates back out
export   `export --to`: a version as a folder of safetensors, the task's config and a model card
damping  the factors a strategy scaled a committed round's updates by (written by the node that merged)

All but gc only read the data dir, so they run beside a running node (revert and export write only their
output); gc takes the data dir's lock to write.
"""
