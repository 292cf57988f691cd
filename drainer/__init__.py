"""PFS layout: self-describing chunk files joined by hard links, and restore from them.

Draining to the parallel file system is not implemented yet; benefactors hold chunks in memory only.
"""
