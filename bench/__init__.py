"""Speed and memory benchmark of galleryvis (``python -m bench``; see bench/README.md).

Modules: ``cases`` (the rows and their implementations), ``seed_style`` (the seed's way, as the
reference loop), ``peers`` (captum, pytorch-grad-cam), ``worker`` (one model per process),
``rebuild`` (cold vs unchanged ``galleryvis build``), ``report`` (tables and target checks).
"""
