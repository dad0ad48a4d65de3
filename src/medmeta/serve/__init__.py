"""The web page (``medmeta serve``), an optional extra: ``pip install 'medmeta[serve]'``."""
