"""The inference engine's batching and backpressure, and the upload decoder, without HTTP."""

import asyncio
import threading
import time

import numpy as np
import pytest
from PIL import Image

from service.decoding import ImageError, decode_image, sniff_format
from service.engine import DetectOptions, EngineStoppedError, InferenceEngine, InferenceError, QueueFullError

from .service_helpers import bad_inputs, encode, photo, scripted_detector

OPTIONS = DetectOptions(score_threshold=0.5, max_detections=10)
IMAGE = np.zeros((48, 64, 3), np.uint8)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


async def started(detector, **options) -> InferenceEngine:
    engine = InferenceEngine(detector.predict_batch, **options)
    await engine.start()
    return engine


def test_idle_engine_does_not_wait_for_a_batch():
    async def main():
        engine = await started(scripted_detector(), max_batch_size=8, max_wait_ms=0)
        result = await engine.detect(IMAGE, OPTIONS)
        await engine.stop()
        return result

    result = run(main())
    assert result.batch_size == 1 and result.queue_ms < 50
    np.testing.assert_allclose(result.detections[0]["box"], [16, 24, 48, 48], atol=0.01)


def test_requests_queued_while_busy_are_batched_up_to_the_limit():
    detector = scripted_detector(delay=0.2)

    async def main():
        engine = await started(detector, max_batch_size=4)
        first = asyncio.ensure_future(engine.detect(IMAGE, OPTIONS))
        await asyncio.sleep(0.05)  # the first image is in inference; the next six queue up behind it
        rest = [asyncio.ensure_future(engine.detect(IMAGE, OPTIONS)) for _ in range(6)]
        results = await asyncio.gather(first, *rest)
        await engine.stop()
        return results

    results = run(main())
    assert detector.batch_sizes == [1, 4, 2]
    assert [r.batch_size for r in results] == [1, 4, 4, 4, 4, 2, 2]
    assert all(len(r.detections) == 1 for r in results)


def test_different_options_in_one_batch_are_each_honoured():
    detector = scripted_detector(delay=0.05)

    async def main():
        engine = await started(detector, max_batch_size=4)
        blocker = asyncio.ensure_future(engine.detect(IMAGE, OPTIONS))
        await asyncio.sleep(0.02)
        person = asyncio.ensure_future(engine.detect(IMAGE, DetectOptions(0.5, 10, ("person",))))
        car = asyncio.ensure_future(engine.detect(IMAGE, DetectOptions(0.5, 10, ("car",))))
        results = await asyncio.gather(blocker, person, car)
        await engine.stop()
        return results

    _, person, car = run(main())
    assert len(person.detections) == 1 and car.detections == []
    assert person.batch_size == car.batch_size == 2


def test_max_wait_gathers_requests_that_arrive_close_together():
    detector = scripted_detector()

    async def main():
        engine = await started(detector, max_batch_size=4, max_wait_ms=100)
        first = asyncio.ensure_future(engine.detect(IMAGE, OPTIONS))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(engine.detect(IMAGE, OPTIONS))
        results = await asyncio.gather(first, second)
        await engine.stop()
        return results

    assert [r.batch_size for r in run(main())] == [2, 2]
    assert detector.batch_sizes == [2]


def test_full_queue_refuses_at_once_and_stop_fails_the_waiting():
    async def main():
        engine = await started(scripted_detector(delay=0.2), max_batch_size=1, queue_size=2)
        running = asyncio.ensure_future(engine.detect(IMAGE, OPTIONS))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(engine.detect(IMAGE, OPTIONS)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await engine.detect(IMAGE, OPTIONS)
        assert engine.queue_depth == 2
        await engine.stop()
        outcomes = await asyncio.gather(running, *waiting, return_exceptions=True)
        with pytest.raises(EngineStoppedError):
            await engine.detect(IMAGE, OPTIONS)
        return outcomes

    outcomes = run(main())
    assert all(isinstance(o, EngineStoppedError) for o in outcomes), outcomes


def test_cancelled_requests_are_skipped():
    detector = scripted_detector(delay=0.1)

    async def main():
        engine = await started(detector, max_batch_size=4)
        blocker = asyncio.ensure_future(engine.detect(IMAGE, OPTIONS))
        await asyncio.sleep(0.02)
        gone = asyncio.ensure_future(engine.detect(IMAGE, OPTIONS))
        kept = asyncio.ensure_future(engine.detect(IMAGE, OPTIONS))
        await asyncio.sleep(0)
        gone.cancel()  # the client went away
        await asyncio.gather(blocker, kept)
        await engine.stop()

    run(main())
    assert detector.batch_sizes == [1, 1]


def test_a_failing_model_fails_its_requests_not_the_engine():
    detector = scripted_detector()
    calls = []

    def flaky(images, **options):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return detector.predict_batch(images, **options)

    async def main():
        engine = InferenceEngine(flaky)
        await engine.start()
        with pytest.raises(InferenceError, match=r"inference failed \(RuntimeError\)"):
            await engine.detect(IMAGE, OPTIONS)
        result = await engine.detect(IMAGE, OPTIONS)
        await engine.stop()
        return result

    assert len(run(main()).detections) == 1


def test_workers_run_batches_at_once_and_a_lone_stream_stays_on_one_thread():
    detector = scripted_detector(delay=0.2)
    threads = []

    def predict_batch(images, **options):
        threads.append(threading.get_ident())
        return detector.predict_batch(images, **options)

    async def main():
        engine = InferenceEngine(predict_batch, max_batch_size=2, workers=2)
        await engine.start()
        begun = time.perf_counter()
        together = await asyncio.gather(*(engine.detect(IMAGE, OPTIONS) for _ in range(4)))
        elapsed = time.perf_counter() - begun
        concurrent_threads = set(threads)
        threads.clear()
        for _ in range(3):  # one request at a time: always the worker freed last
            await engine.detect(IMAGE, OPTIONS)
        await engine.stop()
        return together, elapsed, concurrent_threads

    together, elapsed, concurrent_threads = run(main())
    assert detector.batch_sizes == [2, 2, 1, 1, 1] and [r.batch_size for r in together] == [2, 2, 2, 2]
    assert elapsed < 0.35 and len(concurrent_threads) == 2  # two 0.2 s batches side by side, not 0.4 s
    assert len(set(threads)) == 1


def test_stop_fails_the_batches_of_every_worker():
    async def main():
        engine = await started(scripted_detector(delay=0.2), max_batch_size=1, workers=2)
        running = [asyncio.ensure_future(engine.detect(IMAGE, OPTIONS)) for _ in range(3)]
        await asyncio.sleep(0.05)  # two in inference, one waiting
        await engine.stop()
        return await asyncio.gather(*running, return_exceptions=True)

    outcomes = run(main())
    assert all(isinstance(o, EngineStoppedError) for o in outcomes), outcomes


def test_decode_applies_exif_orientation_and_returns_rgb():
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red
    for orientation, shape, red_at in (
        (1, (20, 40), (10, 5)),
        (6, (40, 20), (5, 10)),
        (8, (40, 20), (35, 10)),
        (3, (20, 40), (10, 35)),
    ):
        exif = Image.Exif()
        exif[0x0112] = orientation
        pixels = decode_image(encode(stored, quality=95, exif=exif.tobytes()), 10**6)
        assert pixels.shape == (*shape, 3) and pixels.dtype == np.uint8
        np.testing.assert_allclose(pixels[red_at], (255, 0, 0), atol=8, err_msg=f"orientation {orientation}")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_decode_converts_other_pixel_formats_to_rgb(mode):
    image = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode) if mode != "I;16" else Image.new(mode, (30, 20))
    pixels = decode_image(encode(image, "PNG"), 10**6)
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8


def test_sniffing_ignores_names_and_rejects_by_signature():
    assert sniff_format(photo()) == "JPEG"
    assert sniff_format(encode(IMAGE, "WEBP")) == "WEBP"
    with pytest.raises(ImageError) as error:
        sniff_format(b"RIFF\0\0\0\0WAVEfmt ")
    assert error.value.status == 415


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_decode_rejects_bad_input_with_a_status(name):
    body, statuses = bad_inputs()[name]
    with pytest.raises(ImageError) as error:
        decode_image(body, 40_000_000)
    assert error.value.status in statuses and error.value.detail


def test_decompression_bomb_is_rejected_from_its_header_fast():
    body, _ = bad_inputs()["decompression bomb"]
    assert len(body) < 2_000_000
    started = time.perf_counter()
    with pytest.raises(ImageError) as error:
        decode_image(body, 40_000_000)
    assert time.perf_counter() - started < 0.5
    assert error.value.status == 413 and "too large" in error.value.detail
    # Under PIL's own bomb threshold, our limit still applies before decoding.
    large = encode(Image.new("1", (8000, 6000)), "PNG")
    with pytest.raises(ImageError, match="48000000 pixels"):
        decode_image(large, 40_000_000)
