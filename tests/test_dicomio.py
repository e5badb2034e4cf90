"""DICOM writer, metadata reader and pixel reader on tiny files made in tmp_path."""

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import (phantom, strip_transfer_syntax, write_bad_files, write_jpeg_lossless,
                            write_malformed_lut_files)
from pydicom.uid import (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                         JPEGLosslessSV1, JPEGLSLossless)

import cxrdet.dicomio.read as read_mod
from cxrdet.dicomio.meta import image_id_from_path, parse_age, read_metadata
from cxrdet.dicomio.read import BadDicomError, read_dicom
from cxrdet.dicomio.write import write_dicom

# files shipped inside the pydicom wheel; taken from disk so nothing is ever downloaded
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.mark.parametrize("ts", ["explicit", "implicit", "jpeg2000", "rle"])
@pytest.mark.parametrize("bits,signed", [(12, False), (14, False), (16, False), (14, True)])
def test_stored_values_round_trip(tmp_path, ts, bits, signed):
    stored = phantom(40, 36, bits, seed=bits, signed=signed)
    ds = pydicom.dcmread(write_dicom(tmp_path / "x.dcm", stored, bits_stored=bits, transfer_syntax=ts))
    np.testing.assert_array_equal(ds.pixel_array, stored)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, bits, bits - 1)
    assert ds.PixelRepresentation == int(signed)


def test_written_file_looks_like_a_real_export_and_is_deterministic(tmp_path):
    stored = phantom()
    a = write_dicom(tmp_path / "a.dicom", stored, window_center=[2000, 1000], window_width=[3000, 500])
    b = write_dicom(tmp_path / "b.dicom", stored, window_center=[2000, 1000], window_width=[3000, 500])
    assert a.read_bytes() == b.read_bytes()
    ds = pydicom.dcmread(a)
    assert ds.preamble is not None and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation
    assert ds.SOPInstanceUID != ds.StudyInstanceUID != ds.SeriesInstanceUID
    assert len(ds.SOPInstanceUID) <= 64 and ds.SOPInstanceUID.is_valid
    assert list(ds.WindowCenter) == [2000, 1000] and ds.PatientAge == "045Y"
    cr = pydicom.dcmread(write_dicom(tmp_path / "c.dicom", stored, modality="CR"))
    assert cr.SOPClassUID == ComputedRadiographyImageStorage
    other = pydicom.dcmread(write_dicom(tmp_path / "d.dicom", stored + 1))
    assert other.SOPInstanceUID != ds.SOPInstanceUID  # UIDs follow the content


def test_writer_rejects_values_outside_bits_and_unavailable_codecs(tmp_path):
    with pytest.raises(ValueError, match="12 unsigned bits"):
        write_dicom(tmp_path / "x.dcm", np.full((4, 4), 5000, np.uint16), bits_stored=12)
    with pytest.raises(ValueError, match="transfer_syntax must be one of"):
        write_dicom(tmp_path / "x.dcm", phantom(), transfer_syntax="png")
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEGLSLossless

    if not get_encoder(JPEGLSLossless).is_available:
        with pytest.raises(ValueError, match="cannot write JPEG-LS"):
            write_dicom(tmp_path / "x.dcm", phantom(), transfer_syntax="jpegls")


def _flat(tmp_path, name, value, **kw):
    return write_dicom(tmp_path / f"{name}.dicom", np.full((32, 32), value, np.uint16), **kw)


def test_window_is_applied_after_rescale(tmp_path):
    # modality value = 2 * 1500 - 1000 = 2000 = the window centre -> about 0.5
    p = _flat(tmp_path, "r", 1500, rescale_slope=2.0, rescale_intercept=-1000.0,
              window_center=2000.5, window_width=1001)
    image, meta = read_dicom(p)
    assert meta["voi_applied"] == "window"
    np.testing.assert_allclose(image, 0.5, atol=1e-6)


def test_first_of_multi_valued_window_is_used(tmp_path):
    p = _flat(tmp_path, "m", 2250, window_center=[2000.5, 100], window_width=[1001, 10])
    np.testing.assert_allclose(read_dicom(p)[0], 0.75, atol=1e-6)
    assert read_metadata(p)["window_center"] == 2000.5


def test_monochrome1_is_the_inverse_of_its_monochrome2_twin(tmp_path):
    stored = phantom(48, 40, 14, seed=3)
    kw = dict(bits_stored=14, window_center=8000, window_width=12000)
    m2, _ = read_dicom(write_dicom(tmp_path / "m2.dicom", stored, **kw))
    m1, _ = read_dicom(write_dicom(tmp_path / "m1.dicom", stored, photometric="MONOCHROME1", **kw))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert 0.0 <= m1.min() and m1.max() <= 1.0


def test_voi_choice_and_fallbacks(tmp_path):
    stored = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (32, 1))  # 32 x 64, 0..4032
    lut = np.clip(np.arange(4096) - 1000, 0, 1000)  # 0 below 1000, ramp to 2000, flat above
    p = write_dicom(tmp_path / "l.dicom", stored, voi_lut=lut, window_center=2048, window_width=4096)
    auto, meta = read_dicom(p)
    assert meta["voi_applied"] == "voi_lut"
    np.testing.assert_allclose(auto[0, :3], 0.0)  # stored 0, 64, 128 < 1000
    np.testing.assert_allclose(auto[0, 24], (1536 - 1000) / 1000, atol=1e-6)
    np.testing.assert_allclose(auto[0, -1], 1.0)
    assert read_dicom(p, voi="window")[1]["voi_applied"] == "window"
    mm, meta = read_dicom(p, voi="minmax")
    assert meta["voi_applied"] == "minmax" and mm.min() == 0.0 and mm.max() == 1.0
    plain = write_dicom(tmp_path / "p.dicom", stored)
    assert read_dicom(plain, voi="window")[1]["voi_applied"] == "minmax"
    assert read_dicom(plain, voi="voi_lut")[1]["voi_applied"] == "minmax"
    with pytest.raises(ValueError, match="voi must be one of"):
        read_dicom(plain, voi="bogus")


def test_every_bad_input_raises_a_one_line_reason(tmp_path):
    expected = write_bad_files(tmp_path)
    for name, reason in expected.items():
        with pytest.raises(BadDicomError) as info:
            read_dicom(tmp_path / name)
        assert reason in str(info.value) and "\n" not in str(info.value), name


def test_malformed_lut_tags_raise_a_one_line_reason(tmp_path):
    for name, reason in write_malformed_lut_files(tmp_path).items():
        with pytest.raises(BadDicomError) as info:
            read_dicom(tmp_path / name)
        assert reason in str(info.value) and "\n" not in str(info.value), name
    # with the VOI LUT ignored, the same file's pixels are fine
    assert read_dicom(tmp_path / "voi_lut_1value.dicom", voi="minmax")[1]["voi_applied"] == "minmax"


def test_any_failure_applying_the_tags_is_a_bad_dicom_error(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "w.dicom", phantom(), window_center=2000, window_width=3000)

    def broken_window(*_args):
        raise ZeroDivisionError("float division by zero")  # stands in for any pydicom quirk

    monkeypatch.setattr(read_mod.intensity, "window", broken_window)
    with pytest.raises(BadDicomError, match=r"presentation tags .* \(ZeroDivisionError: float"):
        read_dicom(path)


def _bundled(name):
    path = PYDICOM_FILES / name
    assert path.is_file(), f"{name} is not bundled with this pydicom"
    return path


@pytest.mark.parametrize("name,syntax", [("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
                                         ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
                                         ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90")])
def test_bundled_lossless_files_read_exactly_like_their_uncompressed_twin(name, syntax):
    twin, _ = read_dicom(_bundled("MR_small.dcm"))
    image, meta = read_dicom(_bundled(name))
    assert meta["transfer_syntax_uid"] == syntax and meta["voi_applied"] == "window"
    assert image.shape == (64, 64) and 0 < float(image.std())
    np.testing.assert_array_equal(image, twin)


@pytest.mark.parametrize("bits", [12, 16])
def test_jpeg_lossless_file_reads_exactly_like_its_uncompressed_twin(tmp_path, bits):
    # pydicom bundles no greyscale JPEG lossless file; tests/dicom_fixtures encodes one
    stored = phantom(64, 48, bits, seed=bits)
    kw = dict(bits_stored=bits, photometric="MONOCHROME1", window_center=2000, window_width=3000)
    twin, _ = read_dicom(write_dicom(tmp_path / "plain.dicom", stored, **kw))
    image, meta = read_dicom(write_jpeg_lossless(tmp_path / "jll.dicom", stored, **kw))
    assert meta["transfer_syntax_uid"] == JPEGLosslessSV1
    np.testing.assert_array_equal(image, twin)


def test_bundled_jpeg_lossless_file_decodes_but_is_refused_as_colour():
    path = _bundled("SC_rgb_jpeg_gdcm.dcm")  # the only process-14 image pydicom ships
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert ds.pixel_array.shape == (100, 100, 3)  # the installed libjpeg plugin decodes it
    with pytest.raises(BadDicomError, match="colour"):
        read_dicom(path)


def test_missing_transfer_syntax_is_inferred_for_pixels_but_reported_empty(tmp_path):
    stored = phantom()
    p = strip_transfer_syntax(write_dicom(tmp_path / "n.dicom", stored))
    assert "TransferSyntaxUID" not in pydicom.dcmread(p).file_meta
    image, meta = read_dicom(p, voi="minmax")
    twin, _ = read_dicom(write_dicom(tmp_path / "t.dicom", stored), voi="minmax")
    np.testing.assert_array_equal(image, twin)
    assert meta["transfer_syntax_uid"] == ""


@pytest.mark.parametrize("text,years", [("045Y", 45.0), ("006M", 0.5), ("026W", 0.4983),
                                        ("073D", 0.1999), ("45", 45.0), ("000Y", math.nan),
                                        ("", math.nan), (None, math.nan), ("old", math.nan)])
def test_parse_age(text, years):
    got = parse_age(text)
    assert (math.isnan(got) and math.isnan(years)) or got == pytest.approx(years, abs=1e-4)


def test_metadata_columns_units_and_missing_values(tmp_path):
    stored = phantom()
    p = write_dicom(tmp_path / "abc.dicom", stored, patient_age="030M", patient_sex="F",
                    manufacturer=None, pixel_spacing=None, window_center=[40, 50], window_width=[400, 500],
                    extra={"ImagerPixelSpacing": [0.2, 0.15]})
    meta = read_metadata(p)
    assert meta["image_id"] == "abc" and (meta["rows"], meta["columns"]) == stored.shape
    assert meta["patient_age"] == 2.5 and meta["patient_sex"] == "F" and meta["manufacturer"] == ""
    assert (meta["pixel_spacing_row"], meta["pixel_spacing_col"]) == (0.2, 0.15)  # ImagerPixelSpacing
    assert (meta["window_center"], meta["window_width"]) == (40.0, 400.0)
    bare = read_metadata(write_dicom(tmp_path / "b.dcm", stored, pixel_spacing=None, patient_age=None,
                                     patient_sex=None))
    assert math.isnan(bare["pixel_spacing_row"]) and math.isnan(bare["patient_age"])
    assert math.isnan(bare["window_center"]) and bare["patient_sex"] == ""
    assert bare["bits_stored"] == 12 and bare["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"


def test_metadata_does_not_read_pixels(tmp_path):
    bad = write_bad_files(tmp_path)
    assert "truncated.dicom" in bad
    assert read_metadata(tmp_path / "truncated.dicom")["rows"] == 64  # pixels cut, header fine


def test_image_id_from_path():
    assert image_id_from_path("/d/000434271f63a053c4128a0ba6352c7f.dicom") == "000434271f63a053c4128a0ba6352c7f"
    assert image_id_from_path("x.DCM") == "x" and image_id_from_path("a.b.dcm") == "a.b"
    assert image_id_from_path("noext") == "noext"
