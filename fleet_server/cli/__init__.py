"""The fleet server's commands, registered on the one ``edgefleet`` command (``edgefleet.cli``).

``admin``     ``edgefleet server``, ``keys ...``, ``models ...``, ``devices ...``
``rollouts``  ``edgefleet rollouts create|status|list|pause|resume|abort|rollback``
``client``    ``AdminClient``: the commands' only way to a server, over the REST API

Heavy libraries are imported inside the handlers, so building the parser stays cheap.
"""
