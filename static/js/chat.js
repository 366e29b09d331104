// The chat page. The server renders the transcript (it reads without JavaScript); this file adds
// copy buttons (code blocks, whole replies) and, on the latest page of a conversation, the live
// part: one WebSocket per conversation, following the protocol in chat/consumers.py, and a
// transcript that follows the reply as it grows unless the reader scrolled up.
//
// Regenerating a reply or editing a message makes a new version of that turn; the server keeps
// the others, and ‹ 2/3 › on a message asks it to show another one (``select``): the transcript
// is then read again from the server, which knows the branch.
//
// While a reply streams it is shown as plain text (textContent, never HTML); when it ends the
// server sends it again as sanitized HTML, the only model text that goes into innerHTML.
(() => {
  "use strict";

  const chat = document.getElementById("chat");
  if (!chat) return; // the empty state: no conversation open
  // Django's JavaScript catalogue (/jsi18n/, loaded by base.html) says these in the page's
  // language; without it, English.
  const gettext = window.gettext || ((text) => text);
  const ngettext = window.ngettext || ((one, many, count) => (count === 1 ? one : many));
  const interpolate =
    window.interpolate || ((text, values) => text.replace(/%\((\w+)\)s/g, (_, key) => values[key]));
  const say = (text, values) => interpolate(gettext(text), values, true);
  const transcript = document.getElementById("transcript");
  const modelSelect = document.getElementById("chat-model");
  // A room: people talk, personas answer their @tag; messages show who wrote them and when.
  const room = chat.dataset.room === "1";
  const me = Number(chat.dataset.me);
  chat.classList.add("has-js"); // what only works with this file (copying a reply) shows
  addCopyButtons(transcript);
  localTimes(transcript);
  transcript.addEventListener("click", onCopyClick);
  // Picking a model saves it at once: over the socket when it is open (no reload), else with
  // the settings form (without JavaScript, an Apply button does). In a room only its maker has
  // the picker.
  let modelShown = modelSelect ? modelSelect.value : "";
  let switchModel = null; // set below once the socket exists
  if (modelSelect) {
    modelSelect.addEventListener("change", () => {
      showModelInfo(modelSelect.value);
      if (!switchModel || !switchModel(modelSelect.value)) modelSelect.form.requestSubmit();
    });
  }
  for (const details of chat.querySelectorAll("details.dropdown")) {
    details.addEventListener("toggle", closeOtherDropdowns);
  }
  if (!chat.dataset.socketPath) return; // reading earlier messages: nothing live there

  const list = document.getElementById("msgs");
  const composer = document.getElementById("composer");
  const input = document.getElementById("composer-input");
  const sendButton = document.getElementById("composer-send");
  const stopButton = document.getElementById("composer-stop");
  const alertBox = document.getElementById("composer-alert");
  const statusLabel = document.getElementById("chat-status");

  const STATE_LABELS = {
    streaming: gettext("writing…"),
    complete: gettext("Complete"),
    stopped: gettext("Stopped"),
    incomplete: gettext("Incomplete"),
    error: gettext("Error"),
  };
  // Within this of the bottom the transcript counts as read to the end, and follows the reply.
  const NEAR_BOTTOM_PX = 48;
  const MAX_RETRY_MS = 30000;
  const newMessagesButton = chat.querySelector("[data-new-messages]");
  let following = true; // the transcript keeps the end of the reply in view (see "scrolling")
  let lastScrollTop = 0;

  // Per streaming reply: how many characters of it we hold, counted as the server counts them
  // (code points), so that deltas can be placed by their offset.
  const received = new Map();
  let socket = null;
  let hasConnected = false;
  let retries = 0;
  let syncRequested = false;
  // Our last request until the server echoes or refuses it: {kind, content, form}.
  let pending = null;
  // Events that arrive while the transcript is re-read from the server, applied after it.
  let heldEvents = null;
  // Set when we were removed from the room: no reconnecting.
  let removed = false;

  chat.classList.add("is-live");
  document.getElementById("composer-fields").disabled = false;
  readOffsets();
  updateControls();
  followStream();
  connect();
  focusComposer();
  switchModel = requestModel;

  composer.addEventListener("submit", onComposerSubmit);
  input.addEventListener("keydown", onComposerKeydown);
  input.addEventListener("input", autosize);
  stopButton.addEventListener("click", onStopClick);
  transcript.addEventListener("click", onTranscriptClick);
  transcript.addEventListener("submit", onEditSubmit);

  // --- socket --------------------------------------------------------------------------------

  function connect() {
    setStatus("connecting", hasConnected ? gettext("Reconnecting…") : gettext("Connecting…"));
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + chat.dataset.socketPath);
    socket = ws;
    ws.addEventListener("open", () => {
      retries = 0;
      syncRequested = false;
      setStatus("online", gettext("Connected"));
      // Events sent while we were away (or between the page render and now) are lost; the
      // server only replays a streaming reply. Re-read the transcript when it may be stale.
      if (hasConnected || streamingNode()) refreshTranscript();
      hasConnected = true;
      updateControls();
    });
    ws.addEventListener("message", (event) => {
      const payload = JSON.parse(event.data);
      if (heldEvents) heldEvents.push(payload);
      else applyEvent(payload);
    });
    ws.addEventListener("close", () => {
      if (socket !== ws) return;
      socket = null;
      if (pending && pending.kind === "model") showModelShown(); // not switched after all
      pending = null; // an answer to it, if any, went with the socket
      if (room) clearPresence();
      if (removed) {
        setStatus("offline", gettext("Removed"));
        updateControls();
        return;
      }
      // Exponential backoff with jitter, so that many tabs do not come back at the same moment.
      const delay = Math.min(MAX_RETRY_MS, 1000 * 2 ** retries) * (0.75 + Math.random() / 2);
      retries += 1;
      setStatus("offline", say("Offline · retrying in %(seconds)s s", { seconds: Math.round(delay / 1000) }));
      setTimeout(connect, delay);
      updateControls();
    });
  }

  function isOpen() {
    return socket !== null && socket.readyState === WebSocket.OPEN;
  }

  function send(frame) {
    if (!isOpen()) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  function setStatus(kind, text) {
    statusLabel.dataset.status = kind;
    statusLabel.textContent = text;
  }

  // --- server events -------------------------------------------------------------------------

  const HANDLERS = {
    message: onMessage,
    truncate: onTruncate,
    "assistant.started": onStarted,
    waiting: onWaiting,
    delta: onDelta,
    snapshot: onSnapshot,
    done: (event) => finishReply(event.message),
    error: onError,
    title: onTitle,
    branch: onBranch,
    model: onModel,
    notice: onNotice,
    typing: onTyping,
    presence: onPresence,
    removed: onRemoved,
    "tool.call": onToolCall,
    "tool.result": onToolResult,
  };

  function onTitle(event) {
    // The title the server gave the conversation after its first exchange.
    const heading = document.getElementById("chat-title");
    const old = heading.textContent;
    heading.textContent = event.title;
    document.title = document.title.replace(old, event.title);
    const link = document.querySelector(".conv-list a[aria-current='page']");
    if (link) link.textContent = event.title;
    // The title was a metered call of its own: the conversation's total includes it now.
    showConversationCost(event.conversation_cost);
  }

  function applyEvent(event) {
    const handler = HANDLERS[event.type];
    if (!handler) return;
    handler(event);
    updateControls();
    // Following (or not) happens as the transcript changes size: see "scrolling" below.
  }

  // Another version of a turn was selected (in this tab or another): the branch shown changed
  // from some message on, and only the server knows what follows there.
  function onBranch() {
    refreshTranscript();
  }

  function onModel({ model }) {
    if (pending && pending.kind === "model") pending = null;
    modelShown = model;
    showVision(model);
    if (modelSelect) {
      modelSelect.value = model;
      modelSelect.closest(".model-picker").removeAttribute("aria-busy");
      showModelInfo(model);
    }
  }

  function onMessage({ message }) {
    const known = findMessage(message.id);
    if (!known) list.append(buildUserMessage(message));
    else if (message.versions) setVersions(known, message.versions);
    if (room && message.author) typingStopped(message.author.id);
    if (pending && pending.kind === "message" && pending.content === message.content) {
      // Only now is the text safe with the server (a refusal keeps it in the composer); and
      // what was typed since it was sent stays.
      if (input.value === message.content) {
        input.value = "";
        autosize();
      }
      if (window.ChatAttachments) window.ChatAttachments.clear(); // sent with it
      pending = null;
    }
  }

  function onTruncate(event) {
    for (const node of list.querySelectorAll(".msg")) {
      const id = Number(node.dataset.id);
      if (id >= event.from) {
        received.delete(id);
        node.remove();
      }
    }
  }

  function onStarted(event) {
    pending = null;
    // One reply streams at a time: another one still shown as streaming belonged to a server
    // process that died, and the server has since marked it. Read its final state.
    const stale = streamingNode();
    const node = assistantNode(event.message.id);
    node.querySelector(".msg-usage").textContent = event.message.model;
    if (event.message.versions) setVersions(node, event.message.versions);
    showSpeaker(node, event.message);
    setOmitted(node, event.omitted_messages);
    if (stale && stale !== node) refreshTranscript();
  }

  // The local model answers one reply at a time: say so while this one is queued.
  function onWaiting({ message_id: id, position }) {
    const node = assistantNode(id);
    if (node.dataset.state !== "streaming") return;
    const ahead = position === 1 ? "1 reply" : `${position} replies`;
    node.querySelector(".msg-status").textContent = `waiting for the model (${ahead} ahead)…`;
  }

  function onDelta({ message_id: id, offset, text }) {
    const node = assistantNode(id);
    if (node.dataset.state !== "streaming") return; // already final: the HTML is authoritative
    const have = received.get(id) || 0;
    // Offsets count Python characters (code points): Array.from splits by code point, where
    // String.length and slice() would count UTF-16 units and cut emoji in half.
    const chars = Array.from(text);
    if (offset + chars.length <= have) return; // a repeat of text a snapshot already gave us
    if (offset > have) {
      requestSync(); // some text went missing: ask for all of it again
      return;
    }
    if (!have) node.querySelector(".msg-status").textContent = STATE_LABELS.streaming;
    node.querySelector(".msg-body").append(chars.slice(have - offset).join(""));
    received.set(id, offset + chars.length);
  }

  function onSnapshot({ message_id: id, text, offset }) {
    syncRequested = false;
    const node = assistantNode(id);
    if (node.dataset.state !== "streaming") return;
    node.querySelector(".msg-body").textContent = text;
    received.set(id, offset);
  }

  function onError(event) {
    if (event.message_id === undefined) {
      // A model refused (its settings do not suit it): show the one still in use.
      if (pending && pending.kind === "model") showModelShown();
      // Refused before anything ran (empty, too long, busy…): the typed text stays put.
      showAlert(event.message, event.code);
      if (pending && pending.form) pending.form.querySelector("[type=submit]").disabled = false;
      pending = null;
      return;
    }
    // The reply failed: keep what arrived and say why. `reply` is the saved message.
    finishReply(
      event.reply || { id: event.message_id, state: "error", error_message: event.message }
    );
  }

  function requestSync() {
    if (!syncRequested && send({ type: "sync" })) syncRequested = true;
  }

  // --- messages ------------------------------------------------------------------------------

  function findMessage(id) {
    return list.querySelector(`.msg[data-id="${Number(id)}"]`);
  }

  function streamingNode() {
    return list.querySelector('.msg[data-state="streaming"]');
  }

  function cloneTemplate(id) {
    return document.getElementById(id).content.firstElementChild.cloneNode(true);
  }

  function buildUserMessage(message) {
    const node = cloneTemplate("tpl-user");
    node.dataset.id = message.id;
    node.dataset.state = message.state;
    node.querySelector(".msg-body").textContent = message.content;
    if (message.versions) setVersions(node, message.versions);
    if (message.attachments && message.attachments.length && window.ChatAttachments) {
      window.ChatAttachments.render(node, message.attachments);
    }
    node.querySelector(".msg-flagged").hidden = !message.flagged;
    if (room && message.author) {
      const mine = message.author.id === me;
      node.classList.toggle("msg--mine", mine);
      node.dataset.author = message.author.id;
      node.querySelector(".msg-author").textContent = mine ? "You" : message.author.name;
      node.querySelector(".avatar").textContent = initial(message.author.name);
      setTime(node.querySelector(".msg-time"), message.created_at);
    }
    return node;
  }

  // Who answered (a persona: its avatar and name), who asked for it, and when.
  function showSpeaker(node, message) {
    if (message.persona) {
      const avatar = node.querySelector(".avatar--persona");
      if (avatar) {
        avatar.textContent = message.persona.avatar || "🤖";
        avatar.style.setProperty("--persona", message.persona.color || "");
        avatar.hidden = false;
      }
      const name = node.querySelector(".msg-author");
      name.textContent = `${message.persona.name} `;
      const tag = document.createElement("span");
      tag.className = "muted small";
      tag.textContent = `@${message.persona.tag}`;
      name.append(tag);
    }
    const caller = node.querySelector(".msg-caller");
    if (caller && message.author) {
      caller.textContent =
        message.author.id === me
          ? gettext("asked by you")
          : say("asked by %(name)s", { name: message.author.name });
    }
    const time = node.querySelector(".msg-time");
    if (time && !time.dateTime) setTime(time, message.created_at);
  }

  function setTime(node, iso) {
    if (!node || !iso) return;
    node.dateTime = iso;
    node.textContent = new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    node.title = new Date(iso).toLocaleString();
  }

  // The server writes times in UTC; show them in the reader's own time zone.
  function localTimes(root) {
    for (const node of root.querySelectorAll("time.msg-time[datetime]")) {
      setTime(node, node.getAttribute("datetime"));
    }
  }

  function initial(name) {
    return (Array.from(name || "?")[0] || "?").toUpperCase();
  }

  // The bubble of a reply, created (empty, streaming) if we missed its start.
  function assistantNode(id) {
    let node = findMessage(id);
    if (!node) {
      node = cloneTemplate("tpl-assistant");
      node.dataset.id = id;
      received.set(Number(id), 0);
      list.append(node);
    }
    return node;
  }

  // A reply has ended (done or error): show the server's final version of it.
  function finishReply(message) {
    const node = assistantNode(message.id);
    received.delete(message.id);
    showSpeaker(node, message);
    if (alertBox.dataset.code === "busy") hideAlert(); // no longer true
    node.dataset.state = message.state;
    node.querySelector(".msg-status").textContent = STATE_LABELS[message.state] || message.state;
    if (typeof message.content === "string") node.dataset.source = message.content;
    if (typeof message.html === "string") {
      const body = node.querySelector(".msg-body");
      body.className = "msg-body markdown";
      body.innerHTML = message.html; // sanitized on the server (chat/markdown.py)
      addCopyButtons(body);
    }
    if (message.omitted_messages !== undefined) setOmitted(node, message.omitted_messages);
    if (Array.isArray(message.tool_calls)) showToolCalls(node, message.tool_calls);
    const errorBox = node.querySelector(".msg-error");
    errorBox.querySelector(".msg-error-text").textContent = message.error_message || "";
    errorBox.hidden = !message.error_message;
    if (message.model) node.querySelector(".msg-usage").textContent = usageText(message);
    showConversationCost(message.conversation_cost);
  }

  function showConversationCost(amount) {
    const total = document.getElementById("chat-cost");
    if (!total || amount == null) return;
    total.textContent = formatUsd(amount);
    const roomTotal = document.getElementById("room-total"); // the room's People panel
    if (roomTotal) roomTotal.textContent = formatUsd(amount);
  }

  // --- tool calls ----------------------------------------------------------------------------
  // Each call a reply makes shows as it starts (name, arguments) and when its result is back;
  // the reply's final version lists them all again, as saved.

  function onToolCall({ message_id: id, call }) {
    const node = assistantNode(id);
    const item = toolItem(node, call.call_id);
    item.querySelector(".tool-call-name").textContent = call.name;
    item.querySelector(".tool-call-arguments").textContent = call.arguments;
    node.querySelector(".msg-status").textContent = say("calling %(name)s…", { name: call.name });
  }

  function onToolResult({ message_id: id, call }) {
    const node = assistantNode(id);
    fillToolCall(toolItem(node, call.call_id), call);
    if (node.dataset.state === "streaming") {
      node.querySelector(".msg-status").textContent = STATE_LABELS.streaming;
    }
  }

  function toolItem(node, callId) {
    const box = node.querySelector(".msg-tools");
    box.hidden = false;
    for (const item of box.querySelectorAll(".tool-call")) {
      if (item.dataset.callId === callId) return item;
    }
    const item = cloneTemplate("tpl-tool-call");
    item.dataset.callId = callId;
    box.append(item);
    return item;
  }

  function fillToolCall(item, call) {
    item.classList.toggle("tool-call--error", Boolean(call.is_error));
    item.querySelector(".tool-call-name").textContent = call.name;
    item.querySelector(".tool-call-arguments").textContent = call.arguments;
    item.querySelector(".tool-call-result").textContent = call.result;
    let meta = call.is_error ? gettext("failed") : gettext("done");
    if (call.duration_ms != null) meta += ` · ${say("%(ms)s ms", { ms: call.duration_ms })}`;
    item.querySelector(".tool-call-meta").textContent = meta;
  }

  function showToolCalls(node, calls) {
    const box = node.querySelector(".msg-tools");
    if (!box) return;
    const open = new Set(
      Array.from(box.querySelectorAll(".tool-call[open]"), (item) => item.dataset.callId),
    );
    box.replaceChildren();
    for (const call of calls) {
      const item = cloneTemplate("tpl-tool-call");
      item.dataset.callId = call.call_id;
      item.open = open.has(call.call_id); // what the reader opened stays open
      fillToolCall(item, call);
      box.append(item);
    }
    box.hidden = !calls.length;
  }

  // Whether the model answering now reads images: the attach button follows (attachments.js).
  function showVision(model) {
    if (room || !modelSelect) return;
    const option = Array.from(modelSelect.options).find((item) => item.value === model);
    if (!option) return;
    composer.dataset.vision = option.dataset.vision;
    composer.dataset.visionReason = interpolate(
      composer.dataset.visionReasonModel || "",
      { model },
      true,
    );
    composer.dispatchEvent(new CustomEvent("chat:vision"));
  }

  function setOmitted(node, count) {
    const note = node.querySelector(".msg-note");
    note.hidden = !count;
    note.textContent = interpolate(
      ngettext(
        "%(count)s earlier message was left out to fit the context window.",
        "%(count)s earlier messages were left out to fit the context window.",
        count,
      ),
      { count },
      true,
    );
  }

  function usageText(message) {
    if (message.prompt_tokens == null) return message.model;
    const estimated = message.usage_estimated ? ` ${gettext("(estimated)")}` : "";
    let cost = message.cost == null ? "" : ` · ${formatUsd(message.cost)}`;
    if (message.priced === false) cost = ` · ${gettext("unpriced")}`; // unknown, not $0
    const tokens = say("%(prompt)s prompt · %(completion)s completion tokens", {
      prompt: message.prompt_tokens,
      completion: message.completion_tokens,
    });
    return `${message.model} · ${tokens}${estimated}${cost}`;
  }

  // As the server's one display rule (core/money.py): half-up to the cent from a dollar up, to
  // 4 places under it, zeros past the cent dropped. Amounts come as exact decimal strings, so
  // the rounding is done on their digits (BigInt, units of 1e-12 USD), never on a float.
  function formatUsd(amount) {
    const match = /^(-?)(\d*)(?:\.(\d*))?$/.exec(String(amount).trim());
    if (!match) return String(amount);
    const units = BigInt((match[2] || "0") + (match[3] || "").padEnd(12, "0").slice(0, 12));
    const rounded = (places) => {
      const step = 10n ** BigInt(12 - places);
      return (units + step / 2n) / step; // half-up on the magnitude
    };
    let places = 4;
    let digits = rounded(4);
    if (units === 0n || digits >= 10000n) {
      places = 2;
      digits = rounded(2);
    }
    const text = digits.toString().padStart(places + 1, "0");
    let fraction = text.slice(-places);
    while (fraction.length > 2 && fraction.endsWith("0")) fraction = fraction.slice(0, -1);
    const whole = text.slice(0, -places).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    const sign = match[1] === "-" && digits !== 0n ? "-" : "";
    return `${sign}$${whole}.${fraction}`;
  }

  // ‹ 2/3 ›: which version of its turn a message is, and the versions either side of it.
  function setVersions(node, versions) {
    const box = node.querySelector("[data-versions]");
    if (!box) return;
    box.hidden = !versions || versions.count < 2;
    if (box.hidden) return;
    box.querySelector("[data-version-label]").textContent = `${versions.index}/${versions.count}`;
    for (const [selector, target] of [
      ["[data-version-prev]", versions.previous],
      ["[data-version-next]", versions.next],
    ]) {
      const button = box.querySelector(selector);
      button.disabled = !target;
      if (target) button.dataset.target = target;
      else delete button.dataset.target;
    }
  }

  // Streaming replies rendered by the server carry how much of the reply they hold.
  function readOffsets() {
    received.clear();
    for (const node of list.querySelectorAll('.msg[data-state="streaming"]')) {
      received.set(Number(node.dataset.id), Number(node.dataset.received) || 0);
    }
  }

  // Replace the messages with a fresh server render; events arriving meanwhile are held and
  // applied after it (each handler tolerates seeing what the render already shows).
  async function refreshTranscript() {
    heldEvents = heldEvents || [];
    transcript.setAttribute("aria-busy", "true"); // not announced again message by message
    try {
      const response = await fetch(location.href, { headers: { Accept: "text/html" } });
      if (response.ok && !response.redirected) {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.getElementById("msgs");
        if (fresh) {
          list.replaceChildren(...fresh.childNodes);
          readOffsets();
          addCopyButtons(list);
          localTimes(list);
          if (following) scrollToBottom();
        }
      }
    } catch {
      // Offline again: the socket's own retry will bring us back here.
    }
    const events = heldEvents;
    heldEvents = null;
    events.forEach(applyEvent);
    updateControls();
  }

  // --- composer and actions ------------------------------------------------------------------

  function onComposerKeydown(event) {
    // Enter sends, Shift+Enter is a new line; Enter that confirms an IME composition (Korean,
    // Japanese…) is not a send.
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) {
      return;
    }
    event.preventDefault();
    composer.requestSubmit();
  }

  function onComposerSubmit(event) {
    event.preventDefault();
    if (pending) return; // the previous request has not been answered yet
    hideAlert();
    if (room) hideSuggestions();
    if (window.ChatAttachments && window.ChatAttachments.busy()) {
      showAlert(gettext("Wait for the images to finish uploading."));
      return;
    }
    const content = input.value;
    const frame = { type: "message", content };
    const attachments = window.ChatAttachments ? window.ChatAttachments.ids() : [];
    if (attachments.length) frame.attachments = attachments;
    if (!request(frame, { kind: "message", content })) return;
    setFollowing(true); // one's own message, and the reply to it, are read as they come
    input.focus();
  }

  function onStopClick() {
    if (send({ type: "stop" })) stopButton.disabled = true;
  }

  // The model picker, over the socket: the page stays as it is. False when not connected (the
  // settings form then saves it, with a reload).
  function requestModel(model) {
    if (!isOpen()) return false;
    if (pending) {
      // Another request is on its way: the model stays as it is (picking it again works).
      showModelShown();
      showAlert(gettext("Wait a moment for the server, then pick the model again."));
      return true;
    }
    hideAlert();
    modelSelect.closest(".model-picker").setAttribute("aria-busy", "true");
    return request({ type: "model", model }, { kind: "model" });
  }

  // The picker back to the model the conversation answers with.
  function showModelShown() {
    if (!modelSelect) return;
    modelSelect.value = modelShown;
    modelSelect.closest(".model-picker").removeAttribute("aria-busy");
    showModelInfo(modelShown);
  }

  // On load, and when the skip link is followed: the message box, ready to type in. Not on
  // touch screens, where focusing would open the keyboard over the conversation.
  function focusComposer() {
    const touch = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
    if (!touch && !location.hash) input.focus({ preventScroll: true });
    document.addEventListener("click", (event) => {
      const link = event.target.closest && event.target.closest('a[href="#composer"]');
      if (!link) return;
      event.preventDefault();
      composer.scrollIntoView({ block: "end" });
      input.focus({ preventScroll: true });
    });
    if (location.hash === "#composer") input.focus({ preventScroll: true });
  }

  // Sends a request the server answers with a turn or a refusal, or says why it cannot.
  function request(frame, pendingRequest) {
    if (!send(frame)) {
      showAlert(gettext("Not connected to the server. Your text is kept; try again in a moment."));
      return false;
    }
    pending = pendingRequest;
    return true;
  }

  function onTranscriptClick(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const node = button.closest(".msg");
    if (button.dataset.action === "regenerate") {
      // A new version of this reply; the others stay, a click away.
      if (!pending) {
        hideAlert();
        const frame = { type: "regenerate", message_id: Number(node.dataset.id) };
        if (request(frame, { kind: "regenerate" })) setFollowing(true);
      }
    } else if (button.dataset.action === "select") {
      if (button.dataset.target && !pending) {
        hideAlert();
        if (!send({ type: "select", message_id: Number(button.dataset.target) })) {
          showAlert(gettext("Not connected to the server. Try again in a moment."));
        }
      }
    } else if (button.dataset.action === "edit") {
      startEdit(node);
    } else if (button.dataset.action === "cancel-edit") {
      endEdit(node);
    }
  }

  function startEdit(node) {
    if (node.querySelector(".msg-edit-form")) return;
    const body = node.querySelector(".msg-body");
    const form = cloneTemplate("tpl-edit");
    const area = form.querySelector("textarea");
    area.value = body.textContent;
    body.hidden = true;
    body.after(form);
    area.focus();
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") endEdit(node);
    });
  }

  function endEdit(node) {
    node.querySelector(".msg-edit-form").remove();
    node.querySelector(".msg-body").hidden = false;
    node.querySelector(".msg-edit").focus();
  }

  function onEditSubmit(event) {
    const form = event.target.closest(".msg-edit-form");
    if (!form) return;
    event.preventDefault();
    if (pending) return;
    hideAlert();
    const frame = {
      type: "edit",
      message_id: Number(form.closest(".msg").dataset.id),
      content: form.querySelector("textarea").value,
    };
    // On success the server truncates from this message and sends it again: the form goes.
    if (request(frame, { kind: "edit", form })) {
      form.querySelector("[type=submit]").disabled = true;
      setFollowing(true);
    }
  }

  function showAlert(text, code = "") {
    alertBox.textContent = text;
    alertBox.dataset.code = code;
    alertBox.hidden = false;
  }

  function hideAlert() {
    alertBox.hidden = true;
    if (noticeBox) noticeBox.hidden = true;
  }

  // Stop while a reply streams; Regenerate/Retry/Edit only when none does (the CSS reads
  // .is-busy). Sending stays possible: the server answers "busy" in words if it must.
  function updateControls() {
    const busy = streamingNode() !== null;
    chat.classList.toggle("is-busy", busy);
    transcript.setAttribute("aria-busy", String(busy)); // read the reply once it is whole
    stopButton.hidden = !busy;
    if (!busy) stopButton.disabled = false;
    sendButton.disabled = !isOpen();
  }

  // The composer grows with its text (up to the CSS max-height), and shrinks once it is sent.
  function autosize() {
    input.style.height = "auto";
    input.style.height = `${input.scrollHeight}px`;
  }

  // --- rooms ---------------------------------------------------------------------------------

  const TYPING_SEND_MS = 2000; // the server passes on one "typing" per person every 2 s
  const TYPING_SHOW_MS = 5000; // …and we show it a little longer than that
  const typingLine = document.getElementById("typing");
  const noticeBox = document.getElementById("composer-notice");
  const suggest = document.getElementById("tag-suggest");
  const typists = new Map(); // user id -> {name, timer}
  const here = new Map(); // user id -> {name, sockets}
  let tags = [];
  let lastTypingSent = 0;
  let activeSuggestion = -1;
  if (room) setUpRoom();

  function setUpRoom() {
    const data = document.getElementById("persona-tags");
    tags = data ? JSON.parse(data.textContent) : [];
    input.addEventListener("input", onRoomInput);
    input.addEventListener("keydown", onSuggestKeydown, true);
    input.addEventListener("blur", () => setTimeout(hideSuggestions, 150));
    suggest.addEventListener("mousedown", (event) => {
      const option = event.target.closest("[data-tag]");
      if (!option) return;
      event.preventDefault(); // keep the focus in the composer
      pickTag(option.dataset.tag);
    });
  }

  function onRoomInput() {
    const now = Date.now();
    if (input.value.trim() && now - lastTypingSent >= TYPING_SEND_MS) {
      lastTypingSent = now;
      send({ type: "typing" });
    }
    showSuggestions();
  }

  function onNotice(event) {
    noticeBox.textContent = event.message;
    noticeBox.hidden = false;
  }

  function onTyping({ user }) {
    if (user.id === me) return;
    const known = typists.get(user.id);
    if (known) clearTimeout(known.timer);
    typists.set(user.id, {
      name: user.name,
      timer: setTimeout(() => typingStopped(user.id), TYPING_SHOW_MS),
    });
    renderTyping();
  }

  function typingStopped(id) {
    const known = typists.get(id);
    if (!known) return;
    clearTimeout(known.timer);
    typists.delete(id);
    renderTyping();
  }

  function renderTyping() {
    const names = [...typists.values()].map((t) => t.name);
    typingLine.textContent =
      names.length === 0
        ? ""
        : names.length === 1
          ? say("%(name)s is typing…", { name: names[0] })
          : names.length === 2
            ? say("%(first)s and %(second)s are typing…", { first: names[0], second: names[1] })
            : say("%(count)s people are typing…", { count: names.length });
  }

  // Everyone on the room's socket: one entry per person, counted by their open tabs.
  function onPresence({ user, here: isHere }) {
    const known = here.get(user.id) || { name: user.name, sockets: 0 };
    known.sockets = Math.max(0, known.sockets + (isHere ? 1 : -1));
    if (known.sockets) here.set(user.id, known);
    else {
      here.delete(user.id);
      typingStopped(user.id);
    }
    renderPresence();
  }

  function clearPresence() {
    here.clear();
    renderPresence();
  }

  function renderPresence() {
    const count = document.getElementById("here-count");
    // Ourselves included: the server tells the others, not us, that we arrived.
    const present = new Set([...here.keys(), ...(isOpen() ? [me] : [])]);
    if (count) count.textContent = `· ${present.size} here`;
    for (const row of document.querySelectorAll("#people-list [data-user]")) {
      const on = present.has(Number(row.dataset.user));
      row.classList.toggle("is-here", on);
      row.querySelector(".presence-text").textContent = on ? "(here now)" : "(away)";
    }
  }

  function onRemoved(event) {
    removed = true;
    showAlert(event.message, "removed");
    document.getElementById("composer-fields").disabled = true;
  }

  // @tag suggestions: while the message is only "@" and the start of a tag.
  function showSuggestions() {
    const match = input.value.match(/^@([\p{L}\p{N}_-]*)$/u);
    if (!match || !tags.length) return hideSuggestions();
    const start = match[1].toLowerCase();
    const found = tags.filter((t) => t.tag.startsWith(start)).slice(0, 8);
    if (!found.length) return hideSuggestions();
    suggest.replaceChildren(
      ...found.map((t, index) => {
        const option = document.createElement("li");
        option.setAttribute("role", "option");
        option.id = `tag-option-${index}`;
        option.dataset.tag = t.tag;
        const avatar = document.createElement("span");
        avatar.className = "avatar avatar--persona";
        avatar.textContent = t.avatar || "🤖";
        const label = document.createElement("span");
        label.textContent = `@${t.tag}`;
        label.className = "tag";
        const about = document.createElement("span");
        about.className = "muted small";
        about.textContent = `${t.name}${t.description ? ` · ${t.description}` : ""}`;
        option.append(avatar, label, about);
        return option;
      }),
    );
    activeSuggestion = 0;
    markSuggestion();
    suggest.hidden = false;
    input.setAttribute("aria-expanded", "true");
  }

  function hideSuggestions() {
    if (!suggest || suggest.hidden) return;
    suggest.hidden = true;
    activeSuggestion = -1;
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
  }

  function markSuggestion() {
    const options = suggest.querySelectorAll("[role=option]");
    options.forEach((option, index) => {
      option.setAttribute("aria-selected", String(index === activeSuggestion));
    });
    if (options[activeSuggestion]) {
      input.setAttribute("aria-activedescendant", options[activeSuggestion].id);
    }
  }

  function onSuggestKeydown(event) {
    if (suggest.hidden) return;
    const options = suggest.querySelectorAll("[role=option]");
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      activeSuggestion = (activeSuggestion + step + options.length) % options.length;
      markSuggestion();
    } else if ((event.key === "Enter" || event.key === "Tab") && !event.isComposing) {
      event.preventDefault();
      event.stopImmediatePropagation(); // not a send: it picks the tag
      pickTag(options[activeSuggestion].dataset.tag);
    } else if (event.key === "Escape") {
      hideSuggestions();
    }
  }

  function pickTag(tag) {
    input.value = `@${tag} `;
    hideSuggestions();
    input.focus();
    autosize();
  }

  // --- scrolling: follow the reply unless the reader scrolled up -----------------------------
  //
  // Whether to follow is the reader's choice, read from how they scroll: up and away from the
  // bottom stops it, back to the bottom (or "New messages") resumes it. It is never guessed
  // from where the transcript happens to be when something arrives: a composer that grew with
  // a long message, or text that came between two measures, would read as "scrolled up" and
  // leave the reply growing out of sight. While following, any change of size (text arriving,
  // a reply rendered as Markdown, the composer growing or shrinking, the window resized) keeps
  // the end in view.

  function followStream() {
    transcript.addEventListener("scroll", onScroll, { passive: true });
    window.addEventListener("scroll", onScroll, { passive: true });
    newMessagesButton.addEventListener("click", () => {
      setFollowing(true);
      scrollToBottom();
    });
    // ``grew``: the messages changed (not only the room for them): worth a "New messages".
    const keepUp = (grew) => {
      if (following) scrollToBottom();
      else if (grew && distanceFromBottom() > NEAR_BOTTOM_PX) newMessagesButton.hidden = false;
    };
    if (window.ResizeObserver) {
      const observer = new ResizeObserver((entries) => {
        keepUp(entries.some((entry) => entry.target === list));
      });
      observer.observe(list); // the messages grow
      observer.observe(transcript); // the room for them changes (composer, window)
    } else {
      new MutationObserver(() => keepUp(true)).observe(list, {
        childList: true,
        subtree: true,
        characterData: true,
      });
      window.addEventListener("resize", () => keepUp(false));
    }
    scrollToBottom();
  }

  function onScroll(event) {
    const box = scroller();
    // Only the element that scrolls the transcript in this layout counts.
    if ((box === transcript) !== (event.currentTarget === transcript)) return;
    const top = box.scrollTop;
    if (distanceFromBottom() <= NEAR_BOTTOM_PX) setFollowing(true);
    else if (top < lastScrollTop - 1) setFollowing(false); // the reader went up
    lastScrollTop = top;
  }

  function setFollowing(on) {
    following = on;
    if (on) newMessagesButton.hidden = true;
  }

  // On wide screens the transcript scrolls by itself; on narrow ones the whole page does.
  function scroller() {
    const overflow = getComputedStyle(transcript).overflowY;
    return overflow === "auto" || overflow === "scroll" ? transcript : document.scrollingElement;
  }

  function distanceFromBottom() {
    const box = scroller();
    return box.scrollHeight - box.scrollTop - box.clientHeight;
  }

  function scrollToBottom() {
    const box = scroller();
    box.scrollTop = box.scrollHeight;
    lastScrollTop = box.scrollTop;
  }

  // --- page helpers, live or not -------------------------------------------------------------

  // Without JavaScript the dropdowns may overlap; with it, one is open at a time.
  function closeOtherDropdowns(event) {
    if (!event.target.open) return;
    for (const other of chat.querySelectorAll("details.dropdown[open]")) {
      if (other !== event.target) other.open = false;
    }
  }

  function addCopyButtons(root) {
    for (const code of root.querySelectorAll(".markdown pre > code")) {
      const pre = code.parentElement;
      if (pre.parentElement.classList.contains("codeblock")) continue;
      const block = document.createElement("div");
      block.className = "codeblock";
      const bar = document.createElement("div");
      bar.className = "codeblock-bar";
      const language = document.createElement("span");
      language.textContent = (code.className.match(/language-(\S+)/) || [])[1] || "code";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "button small copy-button";
      button.textContent = gettext("Copy");
      bar.append(language, button);
      pre.replaceWith(block);
      block.append(bar, pre);
    }
  }

  // Copy a code block, or a whole reply as the Markdown the model wrote (data-source).
  async function onCopyClick(event) {
    const button = event.target.closest(".copy-button, .msg-copy");
    if (!button) return;
    const text = button.classList.contains("msg-copy")
      ? button.closest(".msg").dataset.source || ""
      : button.closest(".codeblock").querySelector("pre > code").textContent;
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    try {
      await copyText(text);
      button.textContent = gettext("Copied");
    } catch {
      button.textContent = gettext("Copy failed");
    }
    setTimeout(() => {
      button.textContent = label;
    }, 1500);
  }

  // What the picked model costs and takes (the server wrote one line per model).
  function showModelInfo(model) {
    for (const line of chat.querySelectorAll("[data-model-info]")) {
      line.hidden = line.dataset.modelInfo !== model;
    }
  }

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return;
      } catch {
        // Permission refused (or no focus): try the old way below.
      }
    }
    // Plain-http pages other than localhost have no Clipboard API.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "copy-buffer";
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    if (!copied) throw new Error("The browser refused to copy.");
  }
})();
