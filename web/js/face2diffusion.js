// Face2Diffusion front-end: shows on the node what would otherwise fail after queueing -- a
// prompt without the identifier, missing model files -- and which face F2D Encode Identity used.
// The notes are DOM widgets (node.addDOMWidget): the classic canvas view and the Nodes 2.0 (Vue)
// view both render those, while canvas painting (onDrawForeground) is never called in Nodes 2.0.
// Only this pack's nodes (types starting with "F2D") are touched.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PROMPT_NODES = new Set(["F2DTextEncode", "F2DSampler"]);
const COLOR = "#2a4d5c";
const BGCOLOR = "#1d3540";
const MODEL_FOLDER = "face2diffusion";
const NOTE = "f2d_note";
const LINE = 16; // px per note line (see the style below)
const NOTE_MARGIN = 6; // px around the note in the classic view

// --- the identifier rule, as the nodes apply it ---------------------------------------------
// The nodes (f2d/tokens.py through ComfyUI's CLIP tokenizer) look for the identifier's two
// tokens as consecutive content tokens of the tokenized prompt. The same steps here, on words
// instead of BPE ids (each identifier word is one token): ComfyUI's weight syntax is parsed
// away, "embedding:name" words become non-text, and each piece is split as CLIP's tokenizer
// splits it (lower case, letters / single digits / punctuation runs).

// comfy/sd1_clip.py parse_parentheses + token_weights: "(a b:1.2)" and "(a b)" -> "a b".
function weightedSegments(text) {
  const segments = [];
  const split = (s) => {
    const out = [];
    let item = "";
    let depth = 0;
    for (const ch of s) {
      if (ch === "(") {
        if (depth === 0) {
          if (item) out.push(item);
          item = "(";
        } else item += ch;
        depth += 1;
      } else if (ch === ")") {
        depth -= 1;
        if (depth === 0) {
          out.push(item + ")");
          item = "";
        } else item += ch;
      } else item += ch;
    }
    if (item) out.push(item);
    return out;
  };
  const walk = (s) => {
    for (let x of split(s)) {
      if (x.length >= 2 && x[0] === "(" && x[x.length - 1] === ")") {
        x = x.slice(1, -1);
        const colon = x.lastIndexOf(":");
        if (colon > 0 && isPythonFloat(x.slice(colon + 1))) x = x.slice(0, colon);
        walk(x);
      } else segments.push(x);
    }
  };
  walk(text.replaceAll("\\)", "\0\x01").replaceAll("\\(", "\0\x02"));
  return segments.map((s) => s.replaceAll("\0\x01", ")").replaceAll("\0\x02", "("));
}

function isPythonFloat(s) {
  return /^\s*[+-]?((\d(_?\d)*)?\.?\d(_?\d)*([eE][+-]?\d+)?|(\d(_?\d)*)\.|inf(inity)?|nan)\s*$/i.test(s);
}

// An "embedding:name" word is an embedding (vectors, not text) or, if there is no such file,
// dropped by ComfyUI; either way it is no content token. Text after it in the word still counts.
function withoutEmbeddings(segment) {
  const pieces = segment.split(/ embedding:|\nembedding:/);
  const out = [pieces[0]];
  for (const piece of pieces.slice(1)) out.push(`embedding:${piece}`);
  return out.map((piece) => {
    if (!piece.startsWith("embedding:")) return piece;
    const [name, ...rest] = piece.slice("embedding:".length).replace(/^\n+|\n+$/g, "").split(/\s+/).filter(Boolean);
    const stripped = (name ?? "").replace(/^,+|,+$/g, "");
    const trailing = name && stripped.length < name.length ? name.slice(stripped.length) : "";
    return trailing ? `${trailing} ${rest.join(" ")}` : rest.join(" ");
  });
}

const CLIP_PIECES = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+/gu;
const SPECIAL = new Set(["<|startoftext|>", "<|endoftext|>"]);

function clipWords(text) {
  const words = [];
  for (const segment of weightedSegments(text ?? "")) {
    for (const piece of withoutEmbeddings(segment)) {
      const clean = piece.normalize("NFC").replace(/\s+/g, " ").toLowerCase();
      for (const [w] of clean.matchAll(CLIP_PIECES)) if (!SPECIAL.has(w)) words.push(w);
    }
  }
  return words;
}

// How many times the identifier stands in the prompt (as the nodes count it), or -1 if the
// identifier is not two words, -2 if a word of it is not one plain word (e.g. "f2" or "f-l").
export function countIdentifier(text, identifier) {
  if ((identifier ?? "").trim().split(/\s+/).filter(Boolean).length !== 2) return -1;
  const ids = clipWords(identifier);
  if (ids.length !== 2) return -2;
  const words = clipWords(text);
  let n = 0;
  for (let k = 0; k + 1 < words.length; k++) {
    if (words[k] === ids[0] && words[k + 1] === ids[1]) {
      n += 1;
      k += 1;
    }
  }
  return n;
}

// Pairs of one-letter words other than the identifier ("g m" in "f l and g m"): likely a second
// person's identifier, which stays plain text. f2d/tokens.py other_identifiers is the same rule.
const ONE_LETTER_WORDS = new Set(["a", "i"]);

export function otherIdentifiers(text, identifier) {
  const ids = clipWords(identifier);
  if (ids.length !== 2) return [];
  const words = clipWords(text);
  for (let k = 0; k + 1 < words.length; k++) {
    if (words[k] === ids[0] && words[k + 1] === ids[1]) {
      words[k] = words[k + 1] = null;
      k += 1;
    }
  }
  const single = words.map((w) => w !== null && /^[a-z]$/.test(w) && !ONE_LETTER_WORDS.has(w));
  const found = [];
  for (let k = 0; k + 1 < words.length; k++) {
    if (single[k] && single[k + 1]) {
      found.push(`${words[k]} ${words[k + 1]}`);
      k += 1;
    }
  }
  return found;
}

// --- graph helpers ---------------------------------------------------------------------------
function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// Every node of a type, in the root graph and in every subgraph (nodes inside a subgraph are
// not in app.graph's own node list).
function nodesOfType(type) {
  const root = app.rootGraph ?? app.graph;
  const graphs = [root, ...(root?.subgraphs?.values?.() ?? [])];
  const seen = new Set();
  const found = [];
  while (graphs.length) {
    const graph = graphs.pop();
    if (!graph || seen.has(graph)) continue;
    seen.add(graph);
    for (const node of graph.nodes ?? graph._nodes ?? []) {
      if (node.subgraph) graphs.push(node.subgraph);
      if (node.type === type) found.push(node);
    }
  }
  return found;
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

// --- the note: a DOM widget at the bottom of the node ----------------------------------------
function addStyle() {
  if (document.getElementById("f2d-style")) return;
  const style = document.createElement("style");
  style.id = "f2d-style";
  style.textContent = `
    .f2d-note { box-sizing: border-box; width: 100%; padding: 3px 6px; border-radius: 4px;
      font: 12px/${LINE}px sans-serif; white-space: pre-wrap; overflow-wrap: anywhere;
      pointer-events: none; background: rgba(0, 0, 0, 0.25); }
    .f2d-note[data-state="ok"] { color: #6cc08b; }
    .f2d-note[data-state="bad"] { color: #ff8a8a; border-left: 3px solid #e06c75; }
    .f2d-note[data-state="info"] { color: #b8c4cc; }
    .f2d-note .f2d-warn { color: #e5c07b; }`;
  document.head.append(style);
}

function noteHeight(node) {
  const el = node.f2dNote?.element;
  if (!el) return 0;
  // Wrapped lines count too: at the node's width, a long line takes two or three.
  const width = Math.max(120, (node.size?.[0] ?? 300) - 30);
  const perLine = Math.max(20, Math.floor(width / 6.5));
  const lines = [...el.children].reduce((n, line) => n + Math.max(1, Math.ceil(line.textContent.length / perLine)), 0);
  return Math.max(1, lines) * LINE + 8;
}

function addNote(node) {
  addStyle();
  const element = document.createElement("div");
  element.className = "f2d-note";
  element.dataset.f2dNote = node.type;
  const w = node.addDOMWidget(NOTE, "f2d-note", element, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => element.textContent,
    setValue: () => {},
    getMinHeight: () => noteHeight(node),
    // Spare height goes to the text boxes; the slack covers a wrap more than estimated.
    getMaxHeight: () => noteHeight(node) + 2 * LINE,
    margin: NOTE_MARGIN,
  });
  w.serialize = false; // not part of saved workflows or prompts
  node.f2dNote = { widget: w, element };
}

// state: "ok" (green), "bad" (red), "info" (grey).
function setNote(node, lines, state) {
  const note = node.f2dNote;
  if (!note) return;
  note.element.dataset.f2dNode = String(node.id); // ids are set once the node is in a graph
  const same = note.element.dataset.state === state &&
    note.element.children.length === lines.length &&
    [...note.element.children].every((c, i) => c.textContent === lines[i]);
  if (same) return;
  note.element.dataset.state = state;
  note.element.replaceChildren(...lines.map((line) => {
    const div = document.createElement("div");
    div.textContent = line;
    // A line the node flags (a skipped photo, a face too small, a warning) stands out.
    if (/^⚠|warn|too small|tiny|skipped|no face|no identity|unlike|left out|blurry|turned away/i.test(line)) {
      div.className = "f2d-warn";
    }
    return div;
  }));
  // Room for the note in the classic view (Nodes 2.0 lays the node out from the DOM). Only ever
  // grown: the front end spreads any spare height over the text boxes, and a node shrunk to
  // computeSize leaves DOM widgets less than their minimum once margins are taken.
  const want = node.computeSize?.();
  if (want && node.size && node.size[1] < want[1] + 2 * NOTE_MARGIN) {
    node.setSize([Math.max(node.size[0], want[0]), want[1] + 2 * NOTE_MARGIN]);
  }
  node.setDirtyCanvas?.(true, true);
}

// --- prompt nodes: identifier check and "insert identifier" --------------------------------
// What is wrong with the identifier or its place in the prompt (n from countIdentifier), or null;
// ``missing``: what a prompt without it does on this node.
function identifierProblem(n, identifier, missing = "the person will not appear") {
  if (n === -1) return `✗ identifier "${identifier}" must be two words, e.g. "f l"`;
  if (n === -2) return `✗ identifier "${identifier}": two plain words (letters only), e.g. "f l"`;
  if (n === 0) return `✗ no "${identifier}" in the prompt: ${missing}`;
  return null;
}

function updateIdentifierState(node) {
  const text = widget(node, "text")?.value ?? "";
  const identifier = widget(node, "identifier")?.value ?? "f l";
  const n = countIdentifier(text, identifier);
  node.f2dIdentifierCount = n;
  const problem = identifierProblem(n, identifier);
  if (problem) setNote(node, [problem], "bad");
  else {
    const lines = [`✓ "${identifier}" ×${n}${n > 1 ? " (same person at each place)" : ""}`];
    const others = otherIdentifiers(text, identifier);
    if (others.length) {
      lines.push(`⚠ "${others[0]}" looks like a second person: it stays plain text. One prompt node holds one ` +
        "person; for two, one prompt node each + Conditioning Set Area (workflow 09).");
    }
    setNote(node, lines, "ok");
  }
}

// The widget's own text box (classic view). Nodes 2.0 draws its own text areas: those reach us
// through the widget's value and the document-wide input listener (onTyping).
function textBox(w) {
  return w?.element instanceof HTMLTextAreaElement || w?.element instanceof HTMLInputElement ? w.element : null;
}

function insertIdentifier(node) {
  const w = widget(node, "text");
  const identifier = (widget(node, "identifier")?.value ?? "f l").trim();
  if (!w) return;
  const value = w.value ?? "";
  // The box the prompt is written in: the widget's own (classic view) or the one Nodes 2.0 draws
  // for it (the last one typed in, else the node's text box holding the prompt).
  const drawn = [...document.querySelectorAll(`[data-node-id="${node.id}"] textarea`)];
  const el = [document.activeElement, node.f2dPromptBox, ...drawn, textBox(w)]
    .find((b) => b instanceof HTMLTextAreaElement && b.isConnected && b.value === value);
  const box = el ?? textBox(w);
  let at = value.length;
  // A text box keeps its caret when the click on the button takes the focus away: that is where
  // the user was writing (a box never clicked in has its caret at the end).
  if (el && typeof el.selectionStart === "number") at = el.selectionStart;
  const before = value.slice(0, at);
  const after = value.slice(at);
  const left = before && !/\s$/.test(before) ? " " : "";
  const right = after && !/^\s/.test(after) ? " " : "";
  w.value = `${before}${left}${identifier}${right}${after}`;
  const caret = before.length + left.length + identifier.length;
  const place = (b) => {
    if (b && b.value !== w.value) b.value = w.value;
    b?.setSelectionRange?.(caret, caret); // a second press goes after this one, not at the end
  };
  place(box);
  if (textBox(w) && textBox(w) !== box) textBox(w).value = w.value;
  setTimeout(() => place(box?.isConnected ? box : null), 0); // after Nodes 2.0 writes the value back
  w.callback?.(w.value);
  updateIdentifierState(node);
}

function watchPrompt(node, update) {
  for (const name of ["text", "identifier"]) {
    const w = widget(node, name);
    if (!w) continue;
    afterChange(w, () => update(node));
    textBox(w)?.addEventListener("input", () => update(node));
  }
  update(node);
}

function setupPromptNode(node) {
  const button = node.addWidget("button", "insert identifier", null, () => insertIdentifier(node), { serialize: false });
  button.serialize = false; // saved graphs hold only the node's own values
  addNote(node);
  watchPrompt(node, updateIdentifierState);
}

// F2D Face Detail: its note is for which face got whom; a prompt without the identifier takes
// it over (the run would stop there) and gives it back once the identifier is in.
function updateDetailPromptState(node) {
  const text = widget(node, "text")?.value ?? "";
  const identifier = widget(node, "identifier")?.value ?? "f l";
  const problem = identifierProblem(countIdentifier(text, identifier), identifier, "no face can get its person");
  if (problem) {
    node.f2dPromptProblem = true;
    setNote(node, [problem], "bad");
  } else if (node.f2dPromptProblem) {
    node.f2dPromptProblem = false;
    const last = node.f2dFacesNote;
    setNote(node, last ?? [RESULT_NODES[node.type]], last ? "ok" : "info");
  }
}

// Each node whose prompt is checked while it is typed, and how.
const PROMPT_CHECKS = {
  F2DTextEncode: updateIdentifierState,
  F2DSampler: updateIdentifierState,
  F2DFaceDetail: updateDetailPromptState,
};

// Typing in a text box updates the widget's value on every key in both views, but not every
// front end calls the widget's callback for each key: one listener on the document checks the
// prompt node whose box is being typed in.
function onTyping(event) {
  const box = event.target;
  if (!(box instanceof HTMLTextAreaElement || box instanceof HTMLInputElement)) return;
  const nodeEl = box.closest?.("[data-node-id]");
  const check = () => {
    for (const [type, update] of Object.entries(PROMPT_CHECKS)) {
      for (const node of nodesOfType(type)) {
        const mine = [widget(node, "text"), widget(node, "identifier")].some((w) => textBox(w) === box) ||
          (nodeEl && String(node.id) === nodeEl.dataset.nodeId);
        if (mine && box instanceof HTMLTextAreaElement && (nodeEl || box === textBox(widget(node, "text")))) {
          node.f2dPromptBox = box; // where the prompt is being written (insert identifier uses its caret)
        }
        if (mine) update(node);
      }
    }
  };
  check();
  // Vue writes the widget value after the input event: look again once it has.
  setTimeout(check, 50);
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
  for (const node of nodesOfType("F2DLoadMSID")) updateModelNote(node);
}

function updateModelNote(node) {
  if (modelFiles === null) return;
  const lines = [];
  if (modelFiles.length === 0) {
    lines.push(`✗ models/${MODEL_FOLDER}/ is empty; it needs the official`);
    lines.push("msid.pt and mapping.pt (.pt or .safetensors) from");
    // The page, not a file link: the front ends refuse downloads from the host the files are on.
    lines.push("github.com/mapooon/Face2Diffusion (Download checkpoints)");
  } else {
    for (const name of ["msid", "mapping"]) {
      const value = widget(node, name)?.value;
      if (value && !modelFiles.includes(value)) lines.push(`✗ ${name}: '${value}' is not in models/${MODEL_FOLDER}/`);
    }
    if (lines.length) lines.push(`Files there: ${modelFiles.join(", ")}`);
  }
  node.f2dModelNote = lines.length ? lines : null;
  if (lines.length) setNote(node, lines, "bad");
  else setNote(node, [`✓ weights found in models/${MODEL_FOLDER}/`], "ok");
}

function setupLoaderNode(node) {
  addNote(node);
  setNote(node, [`looking in models/${MODEL_FOLDER}/ ...`], "info");
  for (const name of ["msid", "mapping"]) {
    const w = widget(node, name);
    if (w) afterChange(w, () => updateModelNote(node));
  }
  refreshModelFiles();
}

// --- results the server sends: shown on the node -------------------------------------------
// Nodes whose result is worth seeing without wiring an output: what their note says before a run.
// Their lines arrive in the node's ui message (f2d_faces, or "text" as the host's own nodes send).
const RESULT_NODES = {
  F2DEncodeIdentity: "the face used from each photo shows here after a run",
  F2DSaveIdentity: "where the identity is saved shows here after a run",
  F2DBestOfN: "the likeness scores show here after a run",
  F2DIdentitySimilarity: "the likeness scores show here after a run",
  F2DFaceDetail: "which face got which person shows here after a run",
};
// The last lines a node showed, kept in its properties (saved with the workflow and the page's
// autosave): a node that ComfyUI serves from its cache sends nothing, so they are shown again.
const LAST = "f2d_last_note";

function resultLines(message) {
  for (const key of ["f2d_faces", "text"]) {
    const v = message?.[key];
    if (Array.isArray(v) && v.length) return v.map(String).flatMap((t) => t.split("\n"));
  }
  return null;
}

function showResult(node, lines) {
  if (!node.f2dNote) addNote(node);
  node.f2dFacesNote = lines;
  node.properties ??= {};
  node.properties[LAST] = lines;
  setNote(node, lines, "ok");
}

// A node served from the host's cache: its last lines again, said to be from the last run.
function showCached(node) {
  if (!RESULT_NODES[node.type] || node.f2dFacesNote) return;
  const last = node.properties?.[LAST];
  if (Array.isArray(last) && last.length) {
    setNote(node, [...last.map(String), "(unchanged inputs: ComfyUI reused this node's last result)"], "ok");
  } else {
    setNote(node, ["unchanged inputs: ComfyUI reused this node's result from an earlier run on this server;",
      "change an input (or free the node cache) to see it here"], "info");
  }
}

function setupResultNode(node) {
  addNote(node);
  setNote(node, [RESULT_NODES[node.type]], "info");
  if (PROMPT_CHECKS[node.type]) watchPrompt(node, PROMPT_CHECKS[node.type]); // F2D Face Detail
}

// The template browser lists a pack's workflows in the order the server's folder listing gives
// (unsorted); ours are numbered in reading order. This pack's folder name, as the server names it.
const PACK_FOLDER = decodeURIComponent(new URL(import.meta.url).pathname.split("/extensions/")[1]?.split("/")[0] ?? "");

function sortOurTemplates() {
  const get = api.getWorkflowTemplates;
  if (typeof get !== "function" || get.f2dSorted) return;
  const sorted = async function () {
    const lists = await get.apply(this, arguments);
    if (Array.isArray(lists?.[PACK_FOLDER])) lists[PACK_FOLDER] = [...lists[PACK_FOLDER]].sort();
    return lists;
  };
  sorted.f2dSorted = true;
  api.getWorkflowTemplates = sorted;
}

// --- whose run failed ------------------------------------------------------------------------
// Events reach the page for every prompt sent with its client id -- its own, and any a script or
// another tab sent with the same id -- and some for prompts without one. The page's own prompts
// are the ids /prompt answered to its queue requests; until a request is answered, an error
// waits for it (a prompt can fail before its queue request returns).
const queuedHere = new Set();
const queueing = new Set();
let seenQueueRequest = false;

function trackQueuedPrompts() {
  const original = api.queuePrompt;
  if (typeof original !== "function" || original.f2dTracked) return;
  const tracked = function (...args) {
    seenQueueRequest = true;
    const request = Promise.resolve(original.apply(this, args));
    queueing.add(request);
    request
      .then((res) => res?.prompt_id && queuedHere.add(res.prompt_id), () => {})
      .finally(() => queueing.delete(request));
    return request;
  };
  tracked.f2dTracked = true;
  api.queuePrompt = tracked;
}

async function queuedByThisPage(promptId, nodeId) {
  if (!promptId) return false;
  await Promise.allSettled([...queueing]);
  if (seenQueueRequest) return queuedHere.has(promptId);
  // A front end that queues by another path: ask the server who queued it (its queue and
  // history entries are [number, prompt_id, prompt, extra_data, outputs]).
  const own = (entry) => entry?.[3]?.client_id === api.clientId && RESULT_NODES[entry?.[2]?.[nodeId]?.class_type] !== undefined;
  for (let attempt = 0; attempt < 40; attempt++) {
    try {
      const queue = await (await api.fetchApi("/queue")).json();
      const running = [...(queue.queue_running ?? []), ...(queue.queue_pending ?? [])].find((q) => q?.[1] === promptId);
      if (running) return own(running);
      const history = await (await api.fetchApi(`/history/${encodeURIComponent(promptId)}`)).json();
      if (history?.[promptId]) return own(history[promptId].prompt);
    } catch {
      return false;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return false;
}

// --- registration ---------------------------------------------------------------------------
app.registerExtension({
  name: "Face2Diffusion.ui",

  async setup() {
    sortOurTemplates();
    document.addEventListener("input", onTyping, true);
    api.addEventListener("execution_cached", (e) => {
      const cached = new Set((e.detail?.nodes ?? []).map(String));
      for (const type of Object.keys(RESULT_NODES)) {
        for (const node of nodesOfType(type)) if (cached.has(String(node.id))) showCached(node);
      }
    });
    trackQueuedPrompts();
    // A failed run must not leave the faces of an earlier one on show as if they were current.
    // Only this page's runs count: a script's prompt (sent to every page) or another client's
    // may fail at a node with the same id in a graph that is not this one.
    api.addEventListener("execution_error", async (e) => {
      const id = String(e.detail?.node_id ?? "");
      const why = String(e.detail?.exception_message ?? "").split("\n")[0];
      const mine = Object.keys(RESULT_NODES).flatMap((type) => nodesOfType(type)).filter((node) => String(node.id) === id);
      if (!mine.length || !(await queuedByThisPage(e.detail?.prompt_id, id))) return;
      for (const node of mine) {
        node.f2dFacesNote = null;
        setNote(node, ["✗ the last run failed here:", why.length > 160 ? why.slice(0, 157) + "..." : why], "bad");
      }
    });
    // Files appear and disappear while the page is open: look again now and then.
    setInterval(() => {
      if (nodesOfType("F2DLoadMSID").length) refreshModelFiles();
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
      if (RESULT_NODES[nodeData.name]) setupResultNode(this);
      return r;
    };

    // The node's id is known once it is in a graph: tag the note with it (tests, user styles).
    const added = nodeType.prototype.onAdded;
    nodeType.prototype.onAdded = function () {
      const r = added?.apply(this, arguments);
      if (this.f2dNote) this.f2dNote.element.dataset.f2dNode = String(this.id);
      return r;
    };

    const configure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = configure?.apply(this, arguments);
      if (this.f2dNote) this.f2dNote.element.dataset.f2dNode = String(this.id);
      PROMPT_CHECKS[nodeData.name]?.(this);
      if (nodeData.name === "F2DLoadMSID") updateModelNote(this);
      return r;
    };

    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = executed?.apply(this, arguments);
      // Whatever lines the node sends (faces used, detector, warnings, scores, where a file went)
      // are shown as they are.
      const lines = resultLines(message);
      if (lines) showResult(this, lines);
      // Any other node's note ("no identity", left out of a mix): a note appears when there is one.
      const note = message?.f2d_note;
      if (!lines && Array.isArray(note) && note.length) {
        if (!this.f2dNote) addNote(this);
        setNote(this, note.map(String), "info");
      }
      return r;
    };
  },
});
