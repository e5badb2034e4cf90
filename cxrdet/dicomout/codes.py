"""The coded concepts of cxrdet's Structured Reports: ONE table, used by the writer and the reader.

Finding types are SNOMED CT (``SCT``) or DICOM (``DCM``, PS3.16 CID 6102/6104, the thoracic
radiography findings of the Chest CAD templates) codes where one matches the VinBigData class;
classes with no code we could verify get a code of cxrdet's private coding scheme ``99CXRDET``
(the ``99`` prefix is how DICOM marks a local scheme; the SR declares it in its Coding Scheme
Identification Sequence). docs/deploy.md prints this table.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS

PRIVATE_SCHEME = "99CXRDET"
PRIVATE_SCHEME_NAME = "cxrdet local codes"
PRIVATE_SCHEME_ORG = "cxrdet project"


def private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# class_id -> finding type. Each code was checked against a published source (see docs/deploy.md).
FINDING_CODES: tuple[Code, ...] = (
    private("CXR00", "Aortic enlargement"),  # no verified SNOMED CT concept for "enlarged aorta" on a film
    Code("46621007", "SCT", "Atelectasis"),
    Code("18115005", "SCT", "Pathologic calcification"),
    Code("8186001", "SCT", "Cardiomegaly"),
    Code("95436008", "SCT", "Lung consolidation"),
    Code("233703007", "SCT", "Interstitial lung disease"),
    Code("112121", "DCM", "Infiltrate"),
    Code("112001", "DCM", "Opacity"),
    private("CXR08", "Nodule/Mass"),  # SNOMED CT splits it: Nodule 27925004, Mass 4147007
    Code("52988006", "SCT", "Lesion"),
    Code("60046008", "SCT", "Pleural effusion"),
    private("CXR11", "Pleural thickening"),  # no verified SNOMED CT concept
    Code("36118008", "SCT", "Pneumothorax"),
    Code("51615001", "SCT", "Fibrosis of lung"),
)
assert len(FINDING_CODES) == NUM_FINDINGS

# what the report is about and the numbers it holds
PROCEDURE = Code("168537006", "SCT", "Plain radiography")
UNITLESS = Code("1", "UCUM", "no units")
DETECTION_SCORE = private("CXRSCORE", "Detection score")
P_ABNORMAL = private("CXRPABN", "Probability of abnormal image")
GATE_LOW = private("CXRGLOW", "Gate low threshold")
GATE_HIGH = private("CXRGHIGH", "Gate high threshold")
GATE_DECISION = private("CXRGATE", "Gate decision")
IMAGE_FINDING = private("CXRIMAGE", "Whole-image result")

# the gate's three zones (p < low, low <= p < high, p >= high)
GATE_NORMAL = Code("17621005", "SCT", "Normal")
GATE_UNCERTAIN = private("CXRGUNC", "Uncertain")
GATE_ABNORMAL = Code("263654008", "SCT", "Abnormal")
GATE_ZONES: tuple[Code, ...] = (GATE_NORMAL, GATE_UNCERTAIN, GATE_ABNORMAL)


def classifier_code(class_id: int) -> Code:
    """The measurement name of the image classifier's probability for finding ``class_id``."""
    return private(f"CXRP{class_id:02d}", f"Classifier probability of {CLASS_NAMES[class_id]}")


def class_of(code) -> int:
    """The class_id whose finding code is ``code`` (a pydicom Code or highdicom CodedConcept)."""
    for class_id, c in enumerate(FINDING_CODES):
        if c.value == code.value and c.scheme_designator == code.scheme_designator:
            return class_id
    raise ValueError(f"finding type ({code.value}, {code.scheme_designator}, {code.meaning!r}) is not one "
                     f"of cxrdet's {NUM_FINDINGS} finding codes")


def gate_zone(p_abnormal: float, low: float, high: float) -> Code:
    """The gate's decision for P(abnormal) ``p_abnormal`` under thresholds ``low < high``."""
    if p_abnormal < low:
        return GATE_NORMAL
    return GATE_UNCERTAIN if p_abnormal < high else GATE_ABNORMAL
