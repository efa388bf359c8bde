"""Slides and annotation files."""

from .slide import Slide, SlideError, SlideWarning, open_slide

__all__ = ["Slide", "SlideError", "SlideWarning", "open_slide"]
