"""PFS layout: self-describing chunk files joined by hard links, and restore from them alone.

memstage.drainer.layout writes and lists chunk files; memstage.drainer.restore rebuilds a version.
Neither needs a manager or a database: the file names carry everything.
"""
