"""Reading a container's files from the host, safely: see :mod:`docksnap.service.hostcapture`.

- :mod:`.resolve` opens paths inside a container's root (``openat2`` with
  ``RESOLVE_IN_ROOT``, or a descriptor walk), never on the host.
- :mod:`.tree` walks a directory through descriptors and yields its tar members
  with the engine's own header encoding.
"""
