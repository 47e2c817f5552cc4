"""Rendering: plain records in, a static site out; never computes, never imports torch.

:mod:`.safe` (URLs, Markdown escaping, safe Markdown -> HTML), :mod:`.grid` (the table view
model both HTML and Markdown draw), :mod:`.pages` (templates and the files written).
"""
from galleryvis.render.grid import (FAMILY_TITLES, METRICS, ROW_LABELS, SANITY_THRESHOLD, Column, Row, SiteModel, Slot, Sparkline,
                   Table, fmt_number, row_label, sparkline, split_papers, target_text, titlecase)
from galleryvis.render.pages import MD_WIDTH, markdown_tables, md_picture, render_site, technique_description
from galleryvis.render.safe import MdSafe, embed_markdown, md_escape, render_markdown, site_url

__all__ = ["FAMILY_TITLES", "MD_WIDTH", "METRICS", "ROW_LABELS", "SANITY_THRESHOLD", "Column", "MdSafe", "Row",
           "SiteModel", "Slot", "Sparkline", "Table", "embed_markdown", "fmt_number", "markdown_tables", "md_escape",
           "md_picture", "render_markdown", "render_site", "row_label", "site_url", "sparkline", "split_papers",
           "target_text", "technique_description", "titlecase"]
