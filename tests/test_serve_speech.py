"""``POST /v1/speech`` and narrated video jobs on a real server process on loopback, with
the tiny video model (tests/tiny.py) and the tiny speech model (conftest ``tiny_tts``)."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile
from conftest import reference_wav
from tiny import save_tiny_model

from tinysora.io.video import audio_info, video_info
from tinysora.serve.process import ServerProcess as Server
from tinysora.serve.process import wait_for


@pytest.fixture(scope="module")
def served(tiny_tts, tiny_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    model = save_tiny_model(tmp / "model")
    ref, _, _ = reference_wav(tiny_corpus, tmp / "ref.wav")
    args = ("--voice-model", str(tiny_tts / "model"), "--max-speech-chars", "300")
    with Server(model, tmp / "data", *args) as s:
        yield s, ref.read_bytes()


def speak(client, ref: bytes | None, **fields):
    files = {"ref_audio": ("ref.wav", ref, "audio/wav")} if ref is not None else None
    data = {k: str(v) for k, v in fields.items()}
    return client.post("/v1/speech", data=data, files=files)


def test_speech_in_wav_ogg_and_aac(served):
    server, ref = served
    with server.client() as c:
        first = speak(c, ref, text="A red ball. A blue cat!", seed=4)
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "audio/wav" and first.headers["x-seed"] == "4"
        wav, rate = soundfile.read(io.BytesIO(first.content), dtype="float32")
        assert rate == 16000 and len(wav) / rate == pytest.approx(
            float(first.headers["x-audio-seconds"]), abs=1e-3
        )
        assert speak(c, ref, text="A red ball. A blue cat!", seed=4).content == first.content
        ogg = speak(c, ref, text="A red ball.", seed=4, media_type="ogg")
        assert ogg.headers["content-type"] == "audio/ogg"
        assert soundfile.info(io.BytesIO(ogg.content)).format == "OGG"
        aac = speak(c, ref, text="A red ball.", seed=4, media_type="aac")
        assert aac.headers["content-type"] == "audio/aac"
        with av.open(io.BytesIO(aac.content)) as container:
            samples = sum(f.samples for f in container.decode(audio=0))
        assert samples > 0.2 * 16000


def test_streamed_speech_arrives_in_chunks(served):
    server, ref = served
    with server.client() as c:
        files = {"ref_audio": ("ref.wav", ref, "audio/wav")}
        data = {"text": "The red circle moves left. Then it stops.", "streaming": "true"}
        with c.stream("POST", "/v1/speech", data=data, files=files) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
            parts = [p for p in r.iter_raw() if p]
        body = b"".join(parts)
        assert body[:4] == b"RIFF" and body[36:40] == b"data"
        pcm = np.frombuffer(body[44:], dtype="<i2")
        assert len(parts) >= 3 and len(pcm) > 0.5 * 16000  # header, then several chunks


@pytest.mark.parametrize(
    "fields, ref, field",
    [
        ({"text": ""}, "ok", "text"),
        ({"text": "?!..."}, "ok", "text"),
        ({"text": "\U0001f600\U0001f389"}, "ok", "text"),
        ({"text": "a" * 301}, "ok", "text"),
        ({"text": "Hi.", "top_p": 2}, "ok", "top_p"),
        ({"text": "Hi.", "speed": 5}, "ok", "speed"),
        ({"text": "Hi.", "media_type": "mp3"}, "ok", "media_type"),
        ({"text": "Hi.", "prompt_text": "words"}, None, "prompt_text"),
        ({"text": "Hi."}, "short", "ref_audio"),
        ({"text": "Hi."}, "silent", "ref_audio"),
        ({"text": "Hi."}, "junk", "ref_audio"),
    ],
)
def test_bad_speech_requests_get_a_422_naming_the_field(served, fields, ref, field):
    server, good = served
    clips = {"ok": good, None: None, "junk": b"not audio at all"}
    for name, samples in (("short", np.full(16000, 0.1)), ("silent", np.zeros(5 * 16000))):
        buffer = io.BytesIO()
        soundfile.write(buffer, samples.astype(np.float32), 16000, format="WAV")
        clips[name] = buffer.getvalue()
    with server.client() as c:
        r = speak(c, clips[ref], **fields)
    assert r.status_code == 422, r.text
    assert [d["loc"] for d in r.json()["detail"]] == [["body", field]]


def test_a_narrated_video_job(served, tmp_path):
    server, ref = served
    voice = {"voice": ("me.wav", ref, "audio/wav")}
    with server.client() as c:
        job = c.post(
            "/v1/videos",
            files=voice,
            data={
                "prompt": "a red circle moving left",
                "num_frames": "5",
                "narrate": "The red circle moves left. It is quick.",
            },
        )
        assert job.status_code == 202, job.text
        done = wait_for(c, job.json()["id"])
        assert done["status"] == "succeeded", done
        path = tmp_path / "narrated.mp4"
        path.write_bytes(c.get(f"/v1/videos/{done['id']}/content").content)
        video, audio = video_info(path), audio_info(path)
        assert audio["codec"] == "aac" and video["frames"] > 5  # grown to hold the speech
        assert abs(audio["seconds"] - video["frames"] / video["fps"]) <= 1 / video["fps"]
        bad = [
            ({"narrate": "!!!"}, None, "narrate"),
            ({}, voice, "voice"),
            ({"voice_text": "hi"}, None, "voice_text"),
        ]
        for fields, files, field in bad:
            body = {"prompt": "a shape", **fields}
            r = (
                c.post("/v1/videos", data=body, files=files)
                if files
                else c.post("/v1/videos", json=body)
            )
            assert r.status_code == 422, r.text
            assert ["body", field] in [d["loc"] for d in r.json()["detail"]]
