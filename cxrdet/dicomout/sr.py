"""One image's cxrdet results as a DICOM Comprehensive SR (TID 1500 Measurement Report), and back.

``build_sr(source, dets, result)`` takes the source image's header (a pydicom Dataset, pixels not
needed), its detections in ORIGINAL pixels (what the submission holds) and the image-level
results, and returns a highdicom ``ComprehensiveSR`` (SOP class 1.2.840.10008.5.1.4.1.1.88.33):

- one planar ROI group per finding box: a closed SCOORD POLYLINE (the four corners, the first
  repeated) in the source image's pixels, referencing it; the finding type from
  :mod:`cxrdet.dicomout.codes`; the detection score as a unitless measurement; a tracking
  identifier (UID + "finding N: class");
- one image-level group: P(abnormal) of the gate with its thresholds and decision, and the image
  classifier's probabilities when there are any;
- patient and study attributes copied from the source, in cxrdet's own Series of the source's
  study (one per study, its UID derived from the Study Instance UID),
  the device observer "cxrdet" and the algorithm (name, version) on every group.

Box coordinates need no conversion: cxrdet's continuous pixels (:mod:`cxrdet.boxes`: the top-left
corner of the top-left pixel is 0,0) are DICOM's SCOORD pixel coordinates. Class-14 ("No
finding") rows are not regions: the gate decision says it. ``read_sr`` recovers everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import generate_uid

import cxrdet
from cxrdet.classes import CLASS_NAMES, NO_FINDING, NUM_FINDINGS
from cxrdet.detections import Detections
from cxrdet.dicomout import codes
from cxrdet.errors import InputFailure

ALGORITHM_NAME = "cxrdet"
SR_SERIES_NUMBER = 9901  # high, so viewers list it after the acquisition series
SR_SERIES_DESCRIPTION = "cxrdet findings (research use, needs a radiologist)"
DEVICE_UID = generate_uid(entropy_srcs=["cxrdet", "device observer"])  # one fixed UID for the device

# what an SR cannot do without: the references and the patient it belongs to
REQUIRED = (
    ("SOPClassUID", "(0008,0016)"),
    ("SOPInstanceUID", "(0008,0018)"),
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
    ("PatientID", "(0010,0020)"),
    ("Modality", "(0008,0060)"),
)
# modalities of non-images, which highdicom refuses as the source of a region
NOT_IMAGE_MODALITIES = ("SEG", "SR", "DOC", "KO", "PR", "PLAN", "RWV", "REG", "FID", "RTDOSE", "RTPLAN", "RTRECORD",
                        "RTSTRUCT")


@dataclass
class ImageResult:
    """The image-level results an SR carries besides the boxes."""

    p_abnormal: float | None = None  # gate's P(abnormal); None without a gate
    low: float | None = None  # gate thresholds in force
    high: float | None = None
    classifier: dict[int, float] = field(default_factory=dict)  # class_id -> probability

    @classmethod
    def from_row(cls, row: Mapping, low: float | None = None, high: float | None = None,
                 classifier: Mapping[int, float] | None = None) -> "ImageResult":
        """From an image-level row (``cxrdet.formats.image_level``: ``p_abnormal`` NaN/None without
        a gate) and the gate thresholds in force."""
        p = row.get("p_abnormal")
        p = None if p is None or not math.isfinite(float(p)) else float(p)
        return cls(p, low, high, dict(classifier or {}))


@dataclass
class ReadSR:
    """What :func:`read_sr` recovers from an SR."""

    source_sop_instance_uid: str
    source_sop_class_uid: str
    study_instance_uid: str
    detections: Detections  # findings only, original pixels
    tracking_uids: list[str]
    result: ImageResult
    gate_decision: str | None  # meaning of the decision code ("Normal", "Uncertain", "Abnormal")


def check_source(source: Dataset) -> None:
    """InputFailure naming the first attribute an SR needs that ``source`` lacks (or leaves empty)."""
    for keyword, tag in REQUIRED:
        if not str(getattr(source, keyword, "") or "").strip():
            raise InputFailure(f"the source image has no {keyword} {tag}; a DICOM SR must reference its "
                               "image, series, study and patient, so no SR was written for it")
    if "Rows" not in source or "Columns" not in source:
        raise InputFailure("the source image has no Rows/Columns; the SR's regions need its size")
    if str(source.Modality).strip() in NOT_IMAGE_MODALITIES:
        raise InputFailure(f"the source has Modality {str(source.Modality)!r} (0008,0060), which is no image; "
                           "no SR was written for it")
    if not _referencable_image_class(source.SOPClassUID):
        raise InputFailure(f"the source image's SOPClassUID (0008,0016) {str(source.SOPClassUID)[:70]!r} is not a "
                           "DICOM image storage class, so a DICOM SR cannot reference it; no SR was written for it")


def _referencable_image_class(sop_class_uid) -> bool:
    """Whether highdicom can reference an image of this SOP class: it looks the class up in its
    table of the standard's IODs (a KeyError otherwise) and wants one with pixel data."""
    try:
        from highdicom._standard_utils import does_iod_have_pixel_data, get_sop_class_iod_map
    except ImportError:  # another highdicom layout: highdicom itself will say what is wrong
        return True
    uid = str(sop_class_uid)
    return uid in get_sop_class_iod_map() and does_iod_have_pixel_data(uid)


# highdicom describes a referenced image by its Modality: these get TID 1603 projection
# descriptors (PatientOrientation, ImagerPixelSpacing), those TID 1604 cross-sectional ones
PROJECTION_MODALITIES = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")
CROSS_SECTIONAL_MODALITIES = ("CT", "MR", "PT")
NO_DESCRIPTORS_MODALITY = "OT"  # a modality highdicom adds no modality-specific descriptors for


def _library_entry(source: Dataset) -> Dataset:
    """The source as the SR's image library lists it: itself when its header holds the values
    highdicom's descriptors read (two orientation strings, two positive pixel spacings), else a
    copy whose Modality asks for none. Those descriptors are optional content; many CR/DX files
    lack PatientOrientation or ImagerPixelSpacing, and they still get an SR."""
    modality = source.get("Modality")
    if isinstance(modality, str) and modality not in PROJECTION_MODALITIES + CROSS_SECTIONAL_MODALITIES:
        return source
    if modality in PROJECTION_MODALITIES and _pair(source.get("PatientOrientation"), _text) \
            and _pair(source.get("ImagerPixelSpacing"), _spacing):
        return source
    copy = _copy(source)
    copy.Modality = NO_DESCRIPTORS_MODALITY
    return copy


def _copy(source: Dataset) -> Dataset:
    """A copy to edit: ``Dataset(ds)`` and ``ds.copy()`` share their elements with ``ds``, so an edit
    would change the caller's header (serve keeps it for later SR requests). A header without
    pixels is small."""
    return deepcopy(source)


def _pair(value, ok) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__") and len(value) == 2 \
        and all(ok(v) for v in value)


def _text(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _spacing(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def build_sr(source: Dataset, dets: Detections, result: ImageResult | Mapping | None = None, *,
             series_instance_uid: str | None = None, sop_instance_uid: str | None = None,
             instance_number: int | None = None) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one image (see the module docstring); InputFailure if ``source``
    lacks what an SR must reference, ValueError for a box outside the image.

    ``result`` may also be an image-level row (a dict with ``p_abnormal``), without thresholds.
    """
    check_source(source)
    source = _with_type2(source)
    result = result if isinstance(result, ImageResult) else ImageResult.from_row(result or {})
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=cxrdet.__version__)
    groups: list = [_finding_group(source, i, box, float(score), int(cid), algorithm)
                    for i, (box, score, cid) in enumerate(_findings(source, dets))]
    groups.append(_image_group(source, result, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=groups,
        referenced_images=[_library_entry(source)],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=series_instance_uid or sr_series_uid(source.StudyInstanceUID),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number or int(source.get("InstanceNumber") or 1),
        manufacturer=ALGORITHM_NAME,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        software_versions=cxrdet.__version__,
        content_qualification="RESEARCH",
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=codes.PRIVATE_SCHEME, name=codes.PRIVATE_SCHEME_NAME,
            responsible_organization=codes.PRIVATE_SCHEME_ORG)],
    )


def sr_series_uid(study_instance_uid: str) -> str:
    """The one cxrdet SR series of a study: every image's SR lands in it, whichever run wrote it."""
    return generate_uid(entropy_srcs=[str(study_instance_uid), "cxrdet SR series"])


# Type 2 patient/study attributes: an SR must have them, empty when the image does not say
TYPE2 = ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
         "StudyTime", "ReferringPhysicianName")


def _with_type2(source: Dataset) -> Dataset:
    """``source`` itself, or a copy with the missing Type 2 attributes present and empty."""
    missing = [k for k in TYPE2 if k not in source]
    if not missing:
        return source
    copy = _copy(source)
    for keyword in missing:
        setattr(copy, keyword, "")
    return copy


def sr_bytes(source: Dataset, dets: Detections, result: ImageResult | Mapping | None = None, **kw) -> bytes:
    """:func:`build_sr` encoded as a DICOM file (preamble, file meta, explicit VR little endian)."""
    from io import BytesIO

    buf = BytesIO()
    build_sr(source, dets, result, **kw).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _findings(source: Dataset, dets: Detections):
    """The finding rows (class 0..13) of ``dets``, best first, each box inside the image."""
    h, w = int(source.Rows), int(source.Columns)
    findings = dets.select(dets.class_ids != NO_FINDING).sorted()
    for box, score, cid in zip(findings.boxes, findings.scores, findings.class_ids):
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h) or not 0 <= cid < NUM_FINDINGS:
            raise ValueError(f"box {[x0, y0, x1, y1]} of class {cid} is not a finding inside the "
                             f"{w}x{h} source image (expected 0 <= x_min < x_max <= {w}, 0 <= y_min < y_max <= {h})")
        yield (x0, y0, x1, y1), score, cid


def _finding_group(source: Dataset, index: int, box, score: float, class_id: int,
                   algorithm) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    x0, y0, x1, y1 = box
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]),  # closed
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"finding {index + 1}: {CLASS_NAMES[class_id]}")
    score_m = hd.sr.Measurement(name=codes.DETECTION_SCORE, value=score, unit=codes.UNITLESS,
                                algorithm_id=algorithm)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, finding_type=codes.FINDING_CODES[class_id],
        algorithm_id=algorithm, measurements=[score_m],
    )


def _image_group(source: Dataset, result: ImageResult, algorithm) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    def unitless(name, value: float) -> hd.sr.Measurement:
        return hd.sr.Measurement(name=name, value=float(value), unit=codes.UNITLESS, algorithm_id=algorithm)

    measurements, evaluations = [], []
    if result.p_abnormal is not None and math.isfinite(result.p_abnormal):
        measurements.append(unitless(codes.P_ABNORMAL, result.p_abnormal))
        if result.low is not None and result.high is not None:
            measurements += [unitless(codes.GATE_LOW, result.low), unitless(codes.GATE_HIGH, result.high)]
            zone = codes.gate_zone(result.p_abnormal, result.low, result.high)
            evaluations.append(hd.sr.QualitativeEvaluation(name=codes.GATE_DECISION, value=zone))
    for class_id, p in sorted(result.classifier.items()):
        measurements.append(unitless(codes.classifier_code(int(class_id)), p))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="whole image"),
        finding_type=codes.IMAGE_FINDING, algorithm_id=algorithm,
        measurements=measurements or None, qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _observation_context() -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=DEVICE_UID, name=ALGORITHM_NAME, manufacturer_name=codes.PRIVATE_SCHEME_ORG,
        model_name=f"{ALGORITHM_NAME} {cxrdet.__version__}",
    )
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device, observer_identifying_attributes=device,
    ))


def read_sr(sr: Dataset) -> ReadSR:
    """The boxes, scores and image-level results of an SR written by :func:`build_sr`.

    Parsed with highdicom (``ComprehensiveSR.from_dataset``); ValueError when ``sr`` is not such
    an SR (no TID 1500 content, a region that is not a closed 4-corner polyline, an unknown code).
    """
    doc = hd.sr.ComprehensiveSR.from_dataset(sr, copy=True)
    if not isinstance(doc.content, hd.sr.MeasurementReport):
        raise ValueError(f"SR {sr.get('SOPInstanceUID', '?')} holds no TID 1500 Measurement Report")
    boxes, scores, class_ids, uids, refs = [], [], [], [], set()
    for group in doc.content.get_planar_roi_measurement_groups():
        region = group.roi
        corners = np.asarray(region.value, dtype=np.float64)
        if region.graphic_type != hd.sr.GraphicTypeValues.POLYLINE or corners.shape != (5, 2) \
                or not np.array_equal(corners[0], corners[-1]):
            raise ValueError(f"finding {group.tracking_identifier}: expected a closed 4-corner POLYLINE, "
                             f"got {region.graphic_type} with {len(corners)} points")
        refs.add(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        boxes.append([*corners.min(axis=0), *corners.max(axis=0)])
        scores.append(_value(group, codes.DETECTION_SCORE))
        class_ids.append(codes.class_of(group.finding_type))
        uids.append(str(group.tracking_uid))
    (image,) = doc.content.get_image_measurement_groups()
    result, decision = _read_image_group(image)
    evidence = doc.CurrentRequestedProcedureEvidenceSequence[0]
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    if refs - {ref.ReferencedSOPInstanceUID}:
        raise ValueError(f"regions reference {sorted(refs)} but the SR's evidence is {ref.ReferencedSOPInstanceUID}")
    dets = Detections(np.asarray(boxes).reshape(-1, 4), scores, class_ids)
    return ReadSR(str(ref.ReferencedSOPInstanceUID), str(ref.ReferencedSOPClassUID),
                  str(evidence.StudyInstanceUID), dets, uids, result, decision)


def _value(group, name) -> float:
    found = group.get_measurements(name=name)
    if len(found) != 1:
        raise ValueError(f"group {group.tracking_identifier}: expected one {name.meaning!r} measurement, got {len(found)}")
    return float(found[0].value)


def _read_image_group(group) -> tuple[ImageResult, str | None]:
    values = {(m.name.value, m.name.scheme_designator): float(m.value) for m in group.get_measurements()}
    private = lambda code: values.get((code.value, code.scheme_designator))  # noqa: E731
    classifier = {k: private(codes.classifier_code(k)) for k in range(NUM_FINDINGS)}
    result = ImageResult(private(codes.P_ABNORMAL), private(codes.GATE_LOW), private(codes.GATE_HIGH),
                         {k: p for k, p in classifier.items() if p is not None})
    decisions = group.get_qualitative_evaluations(name=codes.GATE_DECISION)
    return result, (decisions[0].value.meaning if decisions else None)
