"""``python -m galleryvis`` runs the command line."""
from .cli import main

main()
