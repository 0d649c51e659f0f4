"""Pure data of the reconciler: keys, specs, live state, changes, plans, issues.

Everything here is a frozen dataclass or a tuple of them: values that can be compared,
hashed where useful, printed, and passed between layers without anyone mutating them.
"""
