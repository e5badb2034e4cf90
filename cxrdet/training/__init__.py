"""Pieces shared by the Lightning trainers (the detector and the image-level classifier)."""
