// Images for the next message, in the chat composer: a file picker button, drag and drop onto
// the composer, and pasting images. Each image is checked here (type, size, how many) and
// uploaded at once (chat/attachment_views.py checks it again, for real); the composer shows a
// thumbnail with a remove button for each, or why it was refused. chat.js sends the uploaded
// ids with the message (ChatAttachments.ids()) and clears the list when the message is sent.
//
// Configured by data attributes of the composer form (#composer): data-attachments-url (the
// upload URL; GET lists the uploads not sent yet, so a reload keeps them), data-vision
// ("true"/"false": whether the model reads images), data-vision-reason (why not),
// data-max-images, data-max-bytes. A change of data-vision (another model picked) is followed.
//
// window.ChatAttachments = { ids(), clear(), render(container, attachments), busy() }:
// render() draws the thumbnails of a message's attachments (serialized by
// chat.attachments.serialize_attachment) the way templates/chat/_attachments.html does.
(() => {
  "use strict";

  const gettext = window.gettext || ((text) => text);
  const ngettext = window.ngettext || ((one, many, count) => (count === 1 ? one : many));
  const interpolate =
    window.interpolate || ((text, values) => text.replace(/%\((\w+)\)s/g, (_, key) => values[key]));
  const TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif"];

  // --- thumbnails of a sent message (usable on any page) -------------------------------------

  function render(container, attachments) {
    if (!container) return;
    const old = container.querySelector(":scope > .msg-attachments");
    if (old) old.remove();
    if (!attachments || !attachments.length) return;
    const list = document.createElement("ul");
    list.className = "msg-attachments";
    list.setAttribute("aria-label", gettext("Attached images"));
    for (const attachment of attachments) {
      const item = document.createElement("li");
      item.className = "msg-attachment";
      const link = document.createElement("a");
      link.href = attachment.url;
      link.target = "_blank";
      link.rel = "noopener";
      link.title = interpolate(
        gettext("%(name)s (%(width)s × %(height)s), opens in a new tab"),
        { name: attachment.name, width: attachment.width, height: attachment.height },
        true,
      );
      link.append(thumbnail(attachment));
      item.append(link);
      list.append(item);
    }
    // After the message's text, before its footer (as the server renders it).
    const foot = container.querySelector(":scope > .msg-foot, :scope > .msg-flagged");
    if (foot) container.insertBefore(list, foot);
    else container.append(list);
  }

  function thumbnail(attachment) {
    const image = document.createElement("img");
    image.src = attachment.thumbnail_url;
    image.alt = attachment.name;
    image.width = attachment.thumbnail_width || attachment.width;
    image.height = attachment.thumbnail_height || attachment.height;
    image.loading = "lazy";
    image.decoding = "async";
    return image;
  }

  const api = {
    ids: () => [],
    clear: () => {},
    busy: () => false,
    render,
  };
  window.ChatAttachments = api;

  // --- the composer ----------------------------------------------------------------------------

  const composer = document.getElementById("composer");
  if (!composer || !composer.dataset.attachmentsUrl) return;
  const uploadUrl = composer.dataset.attachmentsUrl;
  const maxImages = Number(composer.dataset.maxImages) || 4;
  const maxBytes = Number(composer.dataset.maxBytes) || 5 * 1024 * 1024;
  const items = []; // {id, state: "uploading" | "ready" | "error", node, attachment}

  const box = composer.querySelector(".composer-box") || composer;
  const buttons = composer.querySelector(".composer-buttons") || box;
  const input = document.createElement("input");
  input.type = "file";
  input.accept = TYPES.join(",");
  input.multiple = true;
  input.hidden = true;
  input.id = "composer-files";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "button attach-button";
  button.setAttribute("aria-controls", "composer-attachments");
  const buttonLabel = document.createElement("span");
  buttonLabel.setAttribute("aria-hidden", "true");
  buttonLabel.textContent = "📎";
  const buttonText = document.createElement("span");
  buttonText.className = "visually-hidden";
  button.append(buttonLabel, buttonText);
  buttons.prepend(button, input);

  const previews = document.createElement("ul");
  previews.className = "composer-attachments";
  previews.id = "composer-attachments";
  previews.setAttribute("aria-label", gettext("Images for your next message"));
  previews.setAttribute("aria-live", "polite");
  previews.hidden = true;
  box.parentNode.insertBefore(previews, box);

  function vision() {
    return composer.dataset.vision === "true";
  }

  function updateButton() {
    const reason = composer.dataset.visionReason || gettext("This model cannot read images.");
    const full = readyOrUploading() >= maxImages;
    button.disabled = !vision() || full;
    if (!vision()) {
      button.title = reason;
      buttonText.textContent = `${gettext("Attach images")} (${reason})`;
    } else if (full) {
      const text = interpolate(
        ngettext("At most %(count)s image per message", "At most %(count)s images per message", maxImages),
        { count: maxImages },
        true,
      );
      button.title = text;
      buttonText.textContent = `${gettext("Attach images")} (${text})`;
    } else {
      button.title = gettext("Attach images (or drop or paste them here)");
      buttonText.textContent = gettext("Attach images");
    }
    previews.hidden = items.length === 0;
  }

  function readyOrUploading() {
    return items.filter((item) => item.state !== "error").length;
  }

  function csrfToken() {
    const cookie = document.cookie.split("; ").find((part) => part.startsWith("csrftoken="));
    if (cookie) return decodeURIComponent(cookie.slice("csrftoken=".length));
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  function sizeText(bytes) {
    if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
    return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  }

  // One preview: a thumbnail (or the name while it uploads), a remove button, its error.
  function itemNode(name) {
    const node = document.createElement("li");
    node.className = "composer-attachment";
    const figure = document.createElement("span");
    figure.className = "composer-attachment-image";
    const label = document.createElement("span");
    label.className = "composer-attachment-name small";
    label.textContent = name;
    const status = document.createElement("span");
    status.className = "composer-attachment-status small muted";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link composer-attachment-remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", interpolate(gettext("Remove %(name)s"), { name }, true));
    node.append(figure, label, status, remove);
    previews.append(node);
    return node;
  }

  function showError(item, message) {
    item.state = "error";
    item.node.classList.add("composer-attachment--error");
    const status = item.node.querySelector(".composer-attachment-status");
    status.classList.remove("muted");
    status.classList.add("form-error");
    status.setAttribute("role", "alert");
    status.textContent = message;
    updateButton();
  }

  function showReady(item, attachment) {
    item.state = "ready";
    item.id = attachment.id;
    item.attachment = attachment;
    const figure = item.node.querySelector(".composer-attachment-image");
    const image = thumbnail(attachment);
    figure.replaceChildren(image);
    const status = item.node.querySelector(".composer-attachment-status");
    status.textContent = sizeText(attachment.size);
    updateButton();
  }

  function addItem(name) {
    const item = { id: null, state: "uploading", node: itemNode(name), attachment: null };
    items.push(item);
    item.node.querySelector(".composer-attachment-remove").addEventListener("click", () => {
      removeItem(item);
    });
    updateButton();
    return item;
  }

  async function removeItem(item) {
    const index = items.indexOf(item);
    if (index === -1) return;
    items.splice(index, 1);
    item.node.remove();
    updateButton();
    if (item.state === "ready" && item.id) {
      // Not sent: the server forgets it too (it counts against the images per message).
      try {
        await fetch(`${uploadUrl}${item.id}/delete/`, {
          method: "POST",
          headers: { "X-CSRFToken": csrfToken() },
          credentials: "same-origin",
        });
      } catch {
        // Offline: the server drops unsent uploads after a day anyway.
      }
    }
    button.focus();
  }

  // The checks the server makes too, before spending the upload on them.
  function problemWith(file) {
    if (!vision()) return composer.dataset.visionReason || gettext("This model cannot read images.");
    if (!TYPES.includes(file.type)) {
      return gettext("Only PNG, JPEG, WebP and GIF images can be attached.");
    }
    if (file.size > maxBytes) {
      return interpolate(
        gettext("This image is %(size)s; the limit is %(limit)s."),
        { size: sizeText(file.size), limit: sizeText(maxBytes) },
        true,
      );
    }
    if (readyOrUploading() >= maxImages) {
      return interpolate(
        ngettext("A message takes at most %(count)s image.", "A message takes at most %(count)s images.", maxImages),
        { count: maxImages },
        true,
      );
    }
    return null;
  }

  async function upload(file) {
    const problem = problemWith(file);
    const item = addItem(file.name || gettext("Pasted image"));
    if (problem) {
      showError(item, problem);
      return;
    }
    item.node.querySelector(".composer-attachment-status").textContent = gettext("Uploading…");
    const body = new FormData();
    body.append("file", file, file.name || `pasted.${file.type.split("/")[1] || "png"}`);
    try {
      const response = await fetch(uploadUrl, {
        method: "POST",
        body,
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
        credentials: "same-origin",
      });
      const data = await response.json().catch(() => null);
      if (!items.includes(item)) return; // removed while it uploaded
      if (response.ok && data) {
        showReady(item, data);
      } else {
        const message = data && data.error && data.error.message;
        showError(item, message || gettext("The image could not be uploaded."));
      }
    } catch {
      if (items.includes(item)) {
        showError(item, gettext("Not connected to the server. Try again in a moment."));
      }
    }
  }

  function addFiles(files) {
    for (const file of files) upload(file);
  }

  button.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files || []));
    input.value = ""; // the same file can be picked again
  });

  // Drag and drop onto the composer.
  let dragDepth = 0;
  const carriesFiles = (event) =>
    event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  composer.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    composer.classList.add("composer--drop");
  });
  composer.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = vision() ? "copy" : "none";
  });
  composer.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) composer.classList.remove("composer--drop");
  });
  composer.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    composer.classList.remove("composer--drop");
    addFiles(Array.from(event.dataTransfer.files || []));
  });

  // Pasting an image (a screenshot); text pasted along with it still goes into the message.
  composer.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    if (!data) return;
    const images = Array.from(data.files || []).filter((file) => file.type.startsWith("image/"));
    if (!images.length) return;
    if (!data.types.includes("text/plain")) event.preventDefault();
    addFiles(images);
  });

  // Another model picked: the button follows what it can do.
  new MutationObserver(updateButton).observe(composer, {
    attributes: true,
    attributeFilter: ["data-vision", "data-vision-reason"],
  });

  api.ids = () => items.filter((item) => item.state === "ready").map((item) => item.id);
  api.busy = () => items.some((item) => item.state === "uploading");
  api.clear = () => {
    // The message was sent with them: they are the message's now, not the composer's.
    for (const item of items.splice(0)) item.node.remove();
    updateButton();
  };

  updateButton();

  // Uploads made before a reload, not sent yet.
  fetch(uploadUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
    .then((response) => (response.ok ? response.json() : null))
    .then((data) => {
      for (const attachment of (data && data.attachments) || []) {
        if (items.some((item) => item.id === attachment.id)) continue;
        showReady(addItem(attachment.name), attachment);
      }
    })
    .catch(() => {});
})();
