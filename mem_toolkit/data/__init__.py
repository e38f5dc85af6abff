"""Datasets: caption files in the standard layouts (CSV, Karpathy / COCO JSON, webdataset shards), identity folders, and the embedded synthetic generators."""
from .dataset import CaptionDataset
from .faces import make_faces
from .identity import FaceData, load_identity_csv, load_identity_folder
from .loaders import load_caption_csv, load_coco_captions, load_karpathy_json
from .shapes import Difficulty, make_shapes, make_shapes_split
from .shards import load_shards, write_shards
from .sources import DataSource
from .split import load_split

__all__ = ["CaptionDataset", "DataSource", "Difficulty", "FaceData", "load_caption_csv", "load_coco_captions", "load_identity_csv", "load_identity_folder",
           "load_karpathy_json", "load_shards", "load_split", "make_faces", "make_shapes", "make_shapes_split", "write_shards"]
