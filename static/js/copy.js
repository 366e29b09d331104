// Buttons marked data-copy="<input id>" copy that input's value, e.g. a new API key shown once.
// navigator.clipboard where the browser allows it (secure contexts); otherwise the text is
// selected and copied the old way, or left selected for Ctrl+C / Cmd+C.
(() => {
  // Django's JavaScript catalogue (/jsi18n/, loaded by base.html) says these in the page's language.
  const gettext = window.gettext || ((text) => text);

  const say = (button, text) => {
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = text;
    window.clearTimeout(Number(button.dataset.timer));
    button.dataset.timer = String(window.setTimeout(() => { button.textContent = label; }, 2000));
  };

  const selectAll = (input) => {
    input.focus();
    input.select();
    input.setSelectionRange(0, input.value.length);
  };

  const legacyCopy = (input) => {
    selectAll(input);
    try {
      return document.execCommand("copy");
    } catch (error) {
      return false;
    }
  };

  document.addEventListener("focusin", (event) => {
    if (event.target.matches && event.target.matches("input[data-select-on-focus]")) {
      event.target.select();
    }
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const input = document.getElementById(button.dataset.copy);
    if (!input) return;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(input.value);
        selectAll(input);
        say(button, gettext("Copied"));
        return;
      } catch (error) {
        // Permission refused: fall back below.
      }
    }
    say(button, legacyCopy(input) ? gettext("Copied") : gettext("Press Ctrl+C to copy"));
  });
})();
