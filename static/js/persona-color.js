// A persona's avatar takes its colour from the database. The Content-Security-Policy allows no
// style="" attribute, so pages carry the colour in data-persona-color and this sets the
// --persona custom property through the CSSOM, which the policy does not block. (chat.js does
// the same for the messages it adds live.)
(() => {
  for (const avatar of document.querySelectorAll("[data-persona-color]")) {
    avatar.style.setProperty("--persona", avatar.dataset.personaColor);
  }
})();
