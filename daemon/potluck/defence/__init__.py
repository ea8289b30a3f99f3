"""Defences around the merge: bans (bans.py), equivocation evidence (evidence.py, pure), probation
(probation.py, pure) and the async shell that publishes, verifies and applies them (service.py)."""
