"""Segmentation data: (image, mask) sources, NIfTI/2D readers and writers, label maps and volume helpers.

`sources` loads the DRIVE, EM, CT and MR sources into structures of (image, binary mask) samples; `io`
reads and writes the images and masks of ``medmeta segment``; `labels` holds TotalSegmentator's label
maps; `volumes` the windowing, slice selection and square resizing they share.
"""
