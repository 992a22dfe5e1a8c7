"""The example workflows as a user receives them: a note that says what each file is and where it
comes from, download metadata on every loader, the pack's registry id on its nodes, titled nodes in
numbered groups, a saved view that shows the whole graph at a readable zoom, and a thumbnail for the
template browser. Reads the files only (no ComfyUI needed)."""
from __future__ import annotations

import json
import re
import tomllib

import pytest
from PIL import Image

from f2d_testkit import REPO, make_workflows_module

WORKFLOWS = REPO / "workflows"
UI = sorted(WORKFLOWS.glob("*.json"))
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]




MW = make_workflows_module()
KNOWN_HOMES = {f[k] for f in MW.FILES.values() for k in ("url", "page") if f[k]} | {MW.PAPER, MW.OFFICIAL, MW.PACK}
# Where the front ends' missing-models dialogs download from (1.32.9 MissingModelsWarning.vue,
# 1.58.1 missingModelDownload.ts); any other address shows "Download not allowed from source ...".
FRONT_END_DOWNLOAD_SOURCES = ("https://civitai.com/", "https://huggingface.co/")
LOADER_WIDGETS = {"CheckpointLoaderSimple": ["ckpt_name"], "LoraLoader": ["lora_name"],
                  "ControlNetLoader": ["control_net_name"], "F2DLoadMSID": ["msid", "mapping"]}
LOADER_WIDGET_INDEX = {"CheckpointLoaderSimple": [0], "LoraLoader": [0], "ControlNetLoader": [0], "F2DLoadMSID": [0, 1]}
LOADER_DIRECTORY = {"CheckpointLoaderSimple": "checkpoints", "LoraLoader": "loras", "ControlNetLoader": "controlnet",
                    "F2DLoadMSID": "face2diffusion"}


def load(path):
    return json.loads(path.read_text())


def graph_nodes(wf):
    return [n for n in wf["nodes"] if n["type"] != "MarkdownNote"]


def test_names_sort_with_the_basic_workflow_first_and_number_in_order():
    names = [p.stem for p in UI]
    assert names[0] == "01_basic_f2d_sampler"
    assert [int(n[:2]) for n in names] == list(range(1, len(names) + 1)), names
    assert {"09_two_people", "10_mix_identities"} <= set(names)


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_note_says_what_it_shows_which_files_where_from_and_which_folder(path):
    wf = load(path)
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1, "one MarkdownNote per workflow"
    text = notes[0]["widgets_values"][0]
    assert text.startswith("## ") and "f l" in text
    for node in wf["nodes"]:
        for i in LOADER_WIDGET_INDEX.get(node["type"], []):
            name = node["widgets_values"][i]
            folder = f"models/{LOADER_DIRECTORY[node['type']]}/"
            line = next((ln for ln in text.splitlines() if name in ln), "")
            assert folder in line, f"the note does not say that {name} goes in {folder}"
            assert LINK.search(line), f"the note gives no link for {name}"
        if node["type"] == "LoadImage":
            assert node["widgets_values"][0] in text and "ComfyUI/input/" in text
            assert (WORKFLOWS / node["widgets_values"][0]).is_file(), "the example photo ships with the pack"
    links = [url for _, url in LINK.findall(text)]
    assert links and all(url in KNOWN_HOMES for url in links), set(links) - KNOWN_HOMES
    assert MW.PAPER in links and MW.OFFICIAL in links


def test_every_known_home_is_an_https_address_of_the_right_kind():
    for key, f in MW.FILES.items():
        assert f["page"].startswith("https://"), key
        assert f["url"] is None or f["url"].startswith(FRONT_END_DOWNLOAD_SOURCES), (key, "a download the front end refuses")
    # The official weights have no download the front ends accept: their page only.
    assert MW.FILES["msid"]["url"] is None and MW.FILES["mapping"]["url"] is None
    hf = [f for f in MW.FILES.values() if "huggingface.co" in (f["url"] or "")]
    assert all("/resolve/main/" in f["url"] and f["url"].endswith(f["name"]) for f in hf), "direct file links"
    assert MW.FILES["checkpoint"]["name"] == "v1-5-pruned-emaonly-fp16.safetensors"
    assert "Comfy-Org/stable-diffusion-v1-5-archive" in MW.FILES["checkpoint"]["url"]
    assert MW.PAPER.startswith("https://arxiv.org/abs/") and MW.OFFICIAL == "https://github.com/mapooon/Face2Diffusion"


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_loaders_carry_download_metadata_for_their_files(path):
    for node in load(path)["nodes"]:
        if node["type"] not in LOADER_WIDGETS:
            continue
        models = {m["name"]: m for m in node["properties"].get("models", [])}
        for i in LOADER_WIDGET_INDEX[node["type"]]:
            name = node["widgets_values"][i]
            if node["type"] == "F2DLoadMSID":
                # No entry: the front end would offer a download it refuses; the note and the
                # node's own note point to the official page.
                assert name not in models, f"{node['title']}: {name} has download metadata"
                continue
            assert name in models, f"{node['title']}: no models entry for {name}"
            assert models[name]["directory"] == LOADER_DIRECTORY[node["type"]]
            assert models[name]["url"].startswith(FRONT_END_DOWNLOAD_SOURCES), models[name]["url"]


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_nodes_name_their_pack_and_say_what_they_do(path):
    wf = load(path)
    for node in graph_nodes(wf):
        props = node["properties"]
        if node["type"].startswith("F2D"):
            assert (props["cnr_id"], props["ver"]) == (PROJECT["name"], PROJECT["version"]), node["type"]
        else:
            assert props["cnr_id"] == "comfy-core", node["type"]
        title = node["title"]
        assert title != node["type"] and title[0].isupper() and " " in title, f"{node['type']}: title {title!r}"


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_every_node_sits_in_one_numbered_group(path):
    wf = load(path)
    groups = wf["groups"]
    assert len(groups) >= 3
    assert [g["title"].split()[0] for g in groups] == [str(i) for i in range(1, len(groups) + 1)]

    def inside(n, g):
        x, y, w, h = g["bounding"]
        return x <= n["pos"][0] and n["pos"][0] + n["size"][0] <= x + w and y <= n["pos"][1] \
            and n["pos"][1] + n["size"][1] <= y + h

    for node in graph_nodes(wf):
        homes = [g["title"] for g in groups if inside(node, g)]
        assert len(homes) == 1, f"{node['title']} is in groups {homes}"
    for a in groups:  # groups do not overlap
        for b in groups:
            if a is not b:
                ax, ay, aw, ah = a["bounding"]
                bx, by, bw, bh = b["bounding"]
                assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay, (a["title"], b["title"])


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_saved_view_shows_the_whole_graph_at_a_readable_zoom(path):
    wf = load(path)
    ds = wf["extra"]["ds"]
    assert ds["scale"] >= MW.MIN_READABLE_SCALE
    boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in wf["nodes"]]
    boxes += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in wf["groups"]]
    s, (ox, oy) = ds["scale"], ds["offset"]
    for x0, y0, x1, y1 in boxes:
        assert (x0 + ox) * s >= MW.ORIGIN[0] - 1 and (y0 + oy) * s >= MW.ORIGIN[1] - 1
        assert (x1 + ox) * s <= MW.ORIGIN[0] + MW.VIEWPORT[0] + 1 and (y1 + oy) * s <= MW.ORIGIN[1] + MW.VIEWPORT[1] + 1


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_template_browser_thumbnail(path):
    """The front end (1.32.9 and 1.58.1) asks for <workflow name>.jpg beside the workflow."""
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file()
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.size[0] >= 300 and im.size[1] >= 200


def test_api_twins_have_the_same_nodes_and_titles():
    for path in UI:
        api = load(WORKFLOWS / "api" / path.name)
        ui = {str(n["id"]): n for n in graph_nodes(load(path))}
        assert set(api) == set(ui)
        for nid, node in api.items():
            assert (node["class_type"], node["_meta"]["title"]) == (ui[nid]["type"], ui[nid]["title"])


def test_several_photos_workflow_uses_two_photo_files():
    photos = [n["widgets_values"][0] for n in load(WORKFLOWS / "05_several_photos.json")["nodes"]
              if n["type"] == "LoadImage"]
    assert len(photos) == 2 and photos[0] != photos[1]
    assert not any(n["type"] == "ImageFlip" for n in load(WORKFLOWS / "05_several_photos.json")["nodes"])


def test_lora_is_a_published_file():
    lora = next(n for n in load(WORKFLOWS / "03_lora.json")["nodes"] if n["type"] == "LoraLoader")
    assert lora["widgets_values"][0] == MW.FILES["lora"]["name"] == "add_detail.safetensors"
