// Face2Diffusion front-end: shows in the graph what would otherwise fail after queueing --
// a prompt without the identifier, missing model files -- and what F2D Encode Identity used.
// Only this pack's nodes (types starting with "F2D") are touched.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PROMPT_NODES = new Set(["F2DTextEncode", "F2DSampler"]);
const COLOR = "#2a4d5c";
const BGCOLOR = "#1d3540";
const OK = "#6cc08b";
const BAD = "#e06c75";
const MODEL_FOLDER = "face2diffusion";

// Same rule as f2d/tokens.py (class_prompt): the identifier's words as whole words, any
// whitespace between, case-insensitive; prompt weighting such as "(f l:1.2)" still counts.
export function countIdentifier(text, identifier) {
  const words = (identifier || "").trim().split(/\s+/).filter(Boolean);
  if (words.length !== 2) return -1;
  const esc = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const re = new RegExp(`(?<![\\w])${esc.join("\\s+")}(?![\\w])`, "gi");
  return ((text || "").match(re) || []).length;
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// Runs fn after a widget's own callback, keeping whatever the front end or other packs set.
function afterChange(w, fn) {
  const callback = w.callback;
  w.callback = function () {
    const r = callback?.apply(this, arguments);
    fn();
    return r;
  };
}

const LINE = 15;

// One-line notes go just under the node; longer ones (inside=true) get room inside it, since
// the node below would hide them.
function drawNote(node, ctx, lines, color, inside = false) {
  if (!lines?.length || node.flags?.collapsed) return;
  ctx.save();
  ctx.font = "12px sans-serif";
  ctx.fillStyle = color;
  const top = inside ? node.size[1] - lines.length * LINE - 4 : node.size[1] + 6;
  lines.forEach((line, i) => ctx.fillText(line, 8, top + 12 + i * LINE));
  ctx.restore();
}

function makeRoomForNote(node, lines) {
  const base = node.computeSize?.()[1] ?? node.size[1];
  const want = lines?.length ? base + lines.length * LINE + 10 : base;
  if (lines?.length ? node.size[1] < want : node.f2dGrown) node.setSize([node.size[0], want]);
  node.f2dGrown = Boolean(lines?.length);
}

// --- prompt nodes: identifier indicator and "insert identifier" -------------------------
function updateIdentifierState(node) {
  const text = widget(node, "text")?.value ?? "";
  const identifier = widget(node, "identifier")?.value ?? "f l";
  const n = countIdentifier(text, identifier);
  node.f2dIdentifierCount = n;
  node.f2dIdentifierNote =
    n < 0
      ? [`✗ identifier "${identifier}" must be two words`]
      : n === 0
        ? [`✗ no "${identifier}" in the prompt: the person will not appear`]
        : [`✓ "${identifier}" ×${n}${n > 1 ? " (same person at each place)" : ""}`];
  node.setDirtyCanvas?.(true, true);
}

function insertIdentifier(node) {
  const w = widget(node, "text");
  const identifier = (widget(node, "identifier")?.value ?? "f l").trim();
  if (!w) return;
  const el = w.inputEl ?? w.element;
  const value = w.value ?? "";
  let at = value.length;
  if (el && typeof el.selectionStart === "number" && document.activeElement === el) at = el.selectionStart;
  const before = value.slice(0, at);
  const after = value.slice(at);
  const left = before && !/\s$/.test(before) ? " " : "";
  const right = after && !/^\s/.test(after) ? " " : "";
  w.value = `${before}${left}${identifier}${right}${after}`;
  if (el) el.value = w.value;
  w.callback?.(w.value);
  updateIdentifierState(node);
}

function setupPromptNode(node) {
  node.addWidget("button", "insert identifier", null, () => insertIdentifier(node), { serialize: false });
  for (const name of ["text", "identifier"]) {
    const w = widget(node, name);
    if (!w) continue;
    afterChange(w, () => updateIdentifierState(node));
    (w.inputEl ?? w.element)?.addEventListener?.("input", () => {
      w.value = (w.inputEl ?? w.element).value;
      updateIdentifierState(node);
    });
  }
  updateIdentifierState(node);
}

// --- F2D Load MSID: which files go where -----------------------------------------------
let modelFiles = null;

async function refreshModelFiles() {
  try {
    const res = await api.fetchApi(`/models/${MODEL_FOLDER}`);
    const files = res.ok ? await res.json() : [];
    modelFiles = files.filter((f) => !f.replace(/\\/g, "/").startsWith("identities/"));
  } catch {
    modelFiles = null;
  }
  for (const node of app.graph?._nodes ?? []) {
    if (node.type === "F2DLoadMSID") updateModelNote(node);
  }
}

function updateModelNote(node) {
  if (modelFiles === null) return;
  const lines = [];
  if (modelFiles.length === 0) {
    lines.push(`✗ models/${MODEL_FOLDER}/ is empty. Put the official Face2Diffusion`);
    lines.push("  weights there: msid.pt (MSID encoder) and mapping.pt (mapping");
    lines.push("  network), .pt or .safetensors; then press R to refresh.");
  } else {
    for (const name of ["msid", "mapping"]) {
      const value = widget(node, name)?.value;
      if (value && !modelFiles.includes(value)) {
        lines.push(`✗ ${name}: '${value}' is not in models/${MODEL_FOLDER}/`);
      }
    }
    if (lines.length) lines.push(`  Files there: ${modelFiles.join(", ")}`);
  }
  node.f2dModelNote = lines.length ? lines : null;
  makeRoomForNote(node, node.f2dModelNote);
  node.setDirtyCanvas?.(true, true);
}

function setupLoaderNode(node) {
  for (const name of ["msid", "mapping"]) {
    const w = widget(node, name);
    if (w) afterChange(w, () => updateModelNote(node));
  }
  refreshModelFiles();
}

// --- registration ---------------------------------------------------------------------------
app.registerExtension({
  name: "Face2Diffusion.ui",

  async setup() {
    // Files appear and disappear while the page is open: look again now and then.
    setInterval(() => {
      if ((app.graph?._nodes ?? []).some((n) => n.type === "F2DLoadMSID")) refreshModelFiles();
    }, 5000);
  },

  async refreshComboInNodes() {
    await refreshModelFiles();
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("F2D")) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      this.color = COLOR;
      this.bgcolor = BGCOLOR;
      if (PROMPT_NODES.has(nodeData.name)) setupPromptNode(this);
      if (nodeData.name === "F2DLoadMSID") setupLoaderNode(this);
      return r;
    };

    const configure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = configure?.apply(this, arguments);
      if (PROMPT_NODES.has(nodeData.name)) updateIdentifierState(this);
      if (nodeData.name === "F2DLoadMSID") updateModelNote(this);
      return r;
    };

    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = executed?.apply(this, arguments);
      if (message?.f2d_faces) {
        this.f2dFacesNote = message.f2d_faces.map((line) => `✓ ${line}`);
        this.setDirtyCanvas?.(true, true);
      }
      return r;
    };

    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const r = draw?.apply(this, arguments);
      if (this.f2dIdentifierNote) drawNote(this, ctx, this.f2dIdentifierNote, this.f2dIdentifierCount > 0 ? OK : BAD);
      if (this.f2dModelNote) drawNote(this, ctx, this.f2dModelNote, BAD, true);
      if (this.f2dFacesNote) drawNote(this, ctx, this.f2dFacesNote, OK);
      return r;
    };
  },
});
