"""Synthetic KTH-style clips: an articulated stick figure performing the six KTH actions.

Clips follow the KTH layout and naming (``<out>/<action>/personXX_<action>_dY_uncomp.avi``, 160x120 grey,
25 fps, written with OpenCV). Every class uses the same distribution of figure sizes, clothing
brightness, positions and backgrounds; classes differ in how the limbs and the body move:
walking < jogging < running in speed, stride frequency and leg amplitude, all crossing the frame and
turning round at its edges; boxing (alternate punches), handclapping (hands meet in front of the chest) and handwaving
(raised arms swinging) stand still. Scenarios: d1 outdoor, d2 camera zoom changes, d3 different
clothing (wider coat, other brightness), d4 indoor lighting; as in KTH, a person's six actions of one
scenario share one background. Figures are framed and drawn (limbs 0.1 body height thick) so the motion
survives the 4x downsampling of ``actionrec demo``. Seeded and deterministic.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from actionrec.errors import DataError

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
SCENARIOS = {1: "outdoor", 2: "zoom changes", 3: "different clothing", 4: "indoor lighting"}
WIDTH, HEIGHT, FPS = 160, 120, 25

# locomotion: (speed in body heights per second, gait cycles per second, leg swing degrees, knee bend)
_GAITS = {"walking": (0.9, 0.9, 25.0, 15.0), "jogging": (1.7, 1.3, 38.0, 45.0), "running": (2.8, 1.6, 52.0, 70.0)}
# stationary arm actions: cycles per second
_ARM_FREQ = {"boxing": 1.5, "handclapping": 2.0, "handwaving": 1.0}


def _limb(p, angle_deg, length):
    """End point of a limb from p at an angle measured from straight down, positive towards +x."""
    a = math.radians(angle_deg)
    return (p[0] + length * math.sin(a), p[1] + length * math.cos(a))


def _pose(action, t, person, phase):
    """Joint polylines in body units (hip at origin, y down, body height 1) at time t seconds."""
    neck, hip = (0.0, -0.42), (0.0, 0.0)
    head = (0.0, -0.52)
    arms, legs = [], []
    sp = person["speed"]
    if action in _GAITS:
        _, freq, swing, knee = _GAITS[action]
        w = 2 * math.pi * freq * sp * t + phase
        for side in (0, 1):
            s = math.sin(w + side * math.pi)
            thigh = swing * s
            k = _limb(hip, thigh, 0.26)
            shin = thigh - knee * max(0.0, math.sin(w + side * math.pi + 1.2))
            legs.append([hip, k, _limb(k, shin, 0.26)])
            upper = -0.8 * swing * s
            e = _limb(neck, upper, 0.18)
            arms.append([neck, e, _limb(e, upper + 20 + knee, 0.16)])
    else:
        w = 2 * math.pi * _ARM_FREQ[action] * sp * t + phase
        for side, sx in ((0, -1.0), (1, 1.0)):
            shoulder = (0.06 * sx, neck[1])
            if action == "boxing":  # alternate punches to the front (+x), the other fist guards the chin
                ext = 0.5 + 0.5 * math.sin(w + side * math.pi)
                e = _limb(shoulder, 60 + 30 * ext, 0.18)
                hand = _limb(e, 150 - 60 * ext, 0.16)
            elif action == "handclapping":  # forearms raised, hands swing apart and meet in front of the chest
                op = 0.5 + 0.5 * math.sin(w)
                e = _limb(shoulder, sx * 30, 0.16)
                hand = (sx * (0.02 + 0.22 * op), -0.24)
            else:  # handwaving: raised arms swing sideways above the head
                sw = math.sin(w + side * 0.3)
                e = _limb(shoulder, sx * (110 + 20 * sw), 0.18)
                hand = _limb(e, sx * (150 + 35 * sw), 0.16)
            arms.append([shoulder, e, hand])
            legs.append([hip, _limb(hip, sx * 6, 0.26), _limb(_limb(hip, sx * 6, 0.26), sx * 4, 0.26)])
    return head, [neck, hip], arms, legs


def _back_and_forth(start, distance, lo, hi):
    """Position and heading (+1 right, -1 left) after walking ``distance`` (signed) from ``start`` in the
    lane lo..hi, turning round at its ends as the KTH persons do at the edges of the picture."""
    length = hi - lo
    s = (start - lo + distance) % (2 * length)
    heading = 1.0 if distance >= 0 else -1.0
    return (lo + s, heading) if s < length else (lo + 2 * length - s, -heading)


def _background(rng, indoor):
    import cv2

    noise = rng.normal(0, 1, (HEIGHT // 8 + 2, WIDTH // 8 + 2)).astype(np.float32)
    tex = cv2.resize(noise, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 1, (HEIGHT, WIDTH)).astype(np.float32), (0, 0), 1.0)
    if indoor:  # a lit wall: brighter, flatter, with a lighting gradient
        light = np.linspace(0.8, 1.2, WIDTH, dtype=np.float32)[None, :]
        bg = (150 + 12 * tex + 4 * fine) * light
    else:  # outdoor: grass-like texture with a horizon
        bg = 120 + 25 * tex + 10 * fine
        bg[: HEIGHT // 3] += 40
    return bg


def _render(action, scenario, person, bg, rng, n_frames):
    import cv2

    body_h = 62.0 * person["size"]
    shirt, trousers = person["shirt"], person["trousers"]
    coat = scenario == 3
    if coat:
        shirt, trousers = 255 - shirt, 255 - trousers
    # feet low in the frame so the whole figure, raised arms included, stays in the picture
    x_ground = HEIGHT * 0.85 + rng.uniform(-4, 4)
    phase = rng.uniform(0, 2 * math.pi)
    direction = rng.choice([-1.0, 1.0])
    x0 = rng.uniform(0.2, 0.8) * WIDTH
    lane = (0.3 * body_h, WIDTH - 0.3 * body_h)
    frames = []
    for i in range(n_frames):
        t = i / FPS
        facing = direction
        if action in _GAITS:
            travel = _GAITS[action][0] * person["speed"] * body_h * t
            x, facing = _back_and_forth(x0, direction * travel, *lane)
            bob = 0.02 * math.sin(4 * math.pi * _GAITS[action][1] * person["speed"] * t + 2 * phase)
        else:
            x, bob = x0 + 1.5 * math.sin(0.7 * t + phase), 0.0
        head, torso, arms, legs = _pose(action, t, person, phase)
        img = bg.copy()

        def px(p):
            mirror = facing if action in _GAITS or action == "boxing" else 1.0
            return (int(round(x + mirror * p[0] * body_h)), int(round(x_ground - 0.52 * body_h + (p[1] + bob) * body_h)))

        lw = max(2, int(round(0.1 * body_h)))  # limbs stay over a pixel wide at the demo's 40x30
        for leg in legs:
            cv2.polylines(img, [np.array([px(p) for p in leg], np.int32)], False, float(trousers), lw + 1, cv2.LINE_AA)
        cv2.line(img, px(torso[0]), px(torso[1]), float(shirt), int(lw * (2.6 if coat else 2.0)), cv2.LINE_AA)
        for arm in arms:
            cv2.polylines(img, [np.array([px(p) for p in arm], np.int32)], False, float(shirt), lw, cv2.LINE_AA)
        cv2.circle(img, px(head), max(3, int(0.08 * body_h)), float(person["skin"]), -1, cv2.LINE_AA)
        if scenario == 2:  # slow camera zoom in and out around the image centre
            z = 1.2 + 0.2 * math.sin(2 * math.pi * t / max(n_frames / FPS, 1e-3) + phase)  # >= 1: no border
            m = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), 0.0, z)
            img = cv2.warpAffine(img, m, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT)
        if scenario == 4:
            img = img * 0.8 + 30
        img = img + rng.normal(0, 3.0, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def _person(seed, p):
    rng = np.random.default_rng([seed, p, 7919])
    # clothing is either dark or bright so the figure stands out from the mid-grey background, as in KTH
    def tone():
        return rng.uniform(20, 70) if rng.random() < 0.5 else rng.uniform(175, 235)
    return {"size": rng.uniform(0.85, 1.15), "speed": rng.uniform(0.85, 1.15), "shirt": tone(),
            "trousers": tone(), "skin": rng.uniform(90, 210)}


def _writer(path):
    import cv2

    for fourcc in ("FMP4", "XVID", "MJPG"):  # KTH's own DivX first, then fallbacks any OpenCV build has
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (WIDTH, HEIGHT), False)
        if w.isOpened():
            return w
        w.release()
    raise DataError(f"{path}: OpenCV cannot write AVI video here (no FMP4, XVID or MJPG encoder)")


def make_synthetic_kth(out_dir, persons=range(1, 10), scenarios=(1, 3), actions=ACTIONS, seconds=2.4, seed=0,
                       progress=False) -> list[Path]:
    """Write KTH-style clips ``out_dir/<action>/personXX_<action>_dY_uncomp.avi``; returns their paths.

    persons: person numbers (1..99); scenarios: subset of 1..4; seconds: clip length at 25 fps. The same
    arguments always give the same frames (up to the codec).
    """
    persons = [int(p) for p in persons]
    scenarios = [int(s) for s in scenarios]
    if not persons or any(not 1 <= p <= 99 for p in persons):
        raise DataError(f"persons must be numbers 1..99, got {persons}")
    if not scenarios or any(s not in SCENARIOS for s in scenarios):
        raise DataError(f"scenarios must be a subset of 1..4 (d1..d4), got {scenarios}")
    bad = [a for a in actions if a not in ACTIONS]
    if bad:
        raise DataError(f"unknown actions {bad}; choose from {', '.join(ACTIONS)}")
    n_frames = int(round(float(seconds) * FPS))
    if n_frames < 10:
        raise DataError(f"seconds={seconds} gives {n_frames} frames; use at least 0.4 s")
    out = Path(out_dir)
    paths = []
    jobs = [(a, p, s) for a in actions for p in persons for s in scenarios]
    if progress:
        from tqdm import tqdm
        jobs = tqdm(jobs, unit="clip", desc="synth")
    for action, p, s in jobs:
        folder = out / action
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"person{p:02d}_{action}_d{s}_uncomp.avi"
        rng = np.random.default_rng([seed, p, ACTIONS.index(action), s])
        # As in KTH, one person films all six actions of a scenario in the same place: a background
        # per clip would let a net recognise the training clips by their backdrop instead of the motion.
        scene = _background(np.random.default_rng([seed, p, s, 4099]), indoor=s == 4)
        frames = _render(action, s, _person(seed, p), scene, rng, n_frames)
        tmp = path.with_name(path.stem + ".tmp.avi")
        w = _writer(tmp)
        for fr in frames:
            w.write(fr)
        w.release()
        tmp.replace(path)
        paths.append(path)
    return paths
