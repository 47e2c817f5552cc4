"""``python -m galleryvis`` runs the command line."""
from galleryvis.cli import main

main()
