"""Datasets: caption files in the standard layouts, identity folders, and the embedded synthetic generators."""
from .dataset import CaptionDataset
from .loaders import load_caption_csv, load_coco_captions, load_karpathy_json
from .shapes import Difficulty, make_shapes, make_shapes_split

__all__ = ["CaptionDataset", "Difficulty", "load_caption_csv", "load_coco_captions", "load_karpathy_json", "make_shapes", "make_shapes_split"]
