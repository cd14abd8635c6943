"""The ``videoserve`` command: the one package that imports both serve/ and deploy/."""
