"""Reading data: 2D images, 3D volumes (NIfTI / NRRD / DICOM) and data SPECs opened as datasets of cases.

Imports flow one way, from the entry point down to the leaf types:
`datasets` (open_dataset) -> `spec` (resolve_spec: what a SPEC is) -> `annotations` (the annotation folder
format), `builtin`, `image_folder`, `nnunet`, `volume_data` -> `cases`, `volume_reader` -> `nifti_nrrd`, `dicom`
(series, rtstruct, seg, seg_write -> grid, files) -> `volume` (the Volume type), `windowing`, `images`.
"""
