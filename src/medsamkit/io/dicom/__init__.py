"""DICOM to medsamkit volumes: image series (`series`), RTSTRUCT contours (`rtstruct`) and SEG segments
(`seg`) as masks on the series' grid; `files` reads single files and `grid` places objects on a grid.

The readers are importable from here; modules inside medsamkit import the leaf modules directly.
"""

from medsamkit.io.dicom.rtstruct import read_rtstruct
from medsamkit.io.dicom.seg import read_dicom_seg
from medsamkit.io.dicom.series import SeriesInfo, list_dicom_series, read_dicom_series, series_uid_of

__all__ = ["SeriesInfo", "list_dicom_series", "read_dicom_seg", "read_dicom_series", "read_rtstruct",
           "series_uid_of"]
