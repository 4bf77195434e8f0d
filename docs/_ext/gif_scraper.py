"""A sphinx-gallery image scraper for GIF animations written by an example.

An example saves its animation as a ``.gif`` file in its working directory (the
directory of the example source while the gallery is built). After each code block
this scraper moves every such file next to the gallery's other images and returns the
reST that shows it, so the page displays the animation itself and the source tree
stays clean.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sphinx_gallery.scrapers import figure_rst


def scrape_gifs(block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]) -> str:
    """Move the GIF files an example wrote into the gallery's image folder.

    Args:
        block: The executed code block (unused).
        block_vars: Per-block state of sphinx-gallery; provides the example's source
            file and the iterator over the image paths reserved for it.
        gallery_conf: The sphinx-gallery configuration.

    Returns:
        reST showing the moved GIF files, or an empty string if there are none.
    """
    example_dir = Path(block_vars["src_file"]).parent
    gifs = sorted(example_dir.glob("*.gif"))
    if not gifs:
        return ""
    targets = []
    for gif, image_path in zip(gifs, block_vars["image_path_iterator"], strict=False):
        target = Path(image_path).with_suffix(".gif")
        shutil.move(gif, target)
        targets.append(target)
    return figure_rst(targets, gallery_conf["src_dir"])
