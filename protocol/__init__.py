"""Sans-I/O core of albumsync: identities, keys, signed logs, manifests, chunk crypto, frames.

Nothing here waits, reads a clock, touches a disk or a socket: values and bytes in, values and bytes
out. Import from the defining module; this package re-exports nothing.
"""
