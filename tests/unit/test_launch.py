"""Predictor.launch: a batch's answers name the model that ran it, even when a swap lands before they are read."""

from __future__ import annotations

import dataclasses

import torch

from worker.infer import Predictor
from worker.model import load_model


def test_a_batch_launched_before_a_swap_names_the_old_model_and_the_next_the_new(tiny_model_path):
    old = load_model(tiny_model_path, "cpu", 4)
    new = load_model(tiny_model_path, "cpu", 4)
    new.info = dataclasses.replace(new.info, version="8")
    predictor = Predictor(old, 4, topk=2)
    pixels = [bytes([n] * (32 * 32 * 3)) for n in (10, 200)]
    first = predictor.launch(pixels)
    predictor.swap(new)  # lands while the first batch is (notionally) on the device
    second = predictor.launch(pixels)
    (one, _), (two, _) = first.result(), second.result()
    assert (first.tag, second.tag) == (old.info.tag, new.info.tag) and old.info.tag != new.info.tag
    assert one == two and len(one) == 2 and all(len(top) == 2 for top in one)  # same weights, same answers


def test_launch_answers_what_a_plain_forward_pass_does(tiny_model_path):
    model = load_model(tiny_model_path, "cpu", 4)
    predictor = Predictor(model, 4, topk=3)
    pixels = [bytes([n % 256] * (32 * 32 * 3)) for n in (0, 90, 180, 250)]
    preds, ms = predictor.launch(pixels).result()
    batch = torch.stack([torch.frombuffer(bytearray(p), dtype=torch.uint8).view(32, 32, 3) for p in pixels])
    with torch.inference_mode():
        probs = torch.softmax(model.logits(batch), dim=1)
    scores, idx = probs.topk(3, dim=1)
    want = [
        [(model.info.labels[i], s) for i, s in zip(r_i, r_s, strict=True)]
        for r_i, r_s in zip(idx.tolist(), scores.tolist(), strict=True)
    ]
    assert preds == want and ms > 0
