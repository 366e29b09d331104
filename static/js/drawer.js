// The chat's sidebar as a drawer on phones (chat.css, under 800px). The toggle
// (chat/_sidebar.html) opens and closes it; its Close button, Escape, a tap beside it or Tab
// past its end close it. Wider screens always show the sidebar, and there this does nothing. Without scripts the
// toggle stays hidden and the sidebar sits above the chat.
(() => {
  const toggle = document.querySelector(".drawer-toggle[aria-controls]");
  if (!toggle) return;
  const drawer = document.getElementById(toggle.getAttribute("aria-controls"));
  const layout = toggle.closest(".chat-layout");
  if (!drawer || !layout) return;
  const phone = window.matchMedia("(max-width: 799px)");
  const FOCUSABLE = "a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled])";

  const isOpen = () => layout.classList.contains("drawer-open");

  const setOpen = (open, { moveFocus = true } = {}) => {
    layout.classList.toggle("drawer-open", open);
    toggle.setAttribute("aria-expanded", String(open));
    if (!moveFocus) return;
    if (open) {
      // The chat being read, else the first control after Close: where a person opening the
      // list goes.
      const target =
        drawer.querySelector('[aria-current="page"]') ||
        drawer.querySelector(`:is(${FOCUSABLE}):not(.drawer-close)`);
      if (target) target.focus();
    } else {
      toggle.focus();
    }
  };

  toggle.hidden = false;
  toggle.setAttribute("aria-expanded", "false");
  toggle.addEventListener("click", () => setOpen(!isOpen()));
  const close = drawer.querySelector(".drawer-close");
  if (close) {
    close.hidden = false;
    close.addEventListener("click", () => setOpen(false));
  }

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && isOpen()) {
      event.preventDefault();
      setOpen(false);
    }
  });
  // The backdrop is the layout's ::before: a click there lands on the layout, outside the drawer.
  document.addEventListener("click", (event) => {
    if (isOpen() && !drawer.contains(event.target) && !toggle.contains(event.target)) {
      setOpen(false, { moveFocus: false });
    }
  });
  drawer.addEventListener("focusout", (event) => {
    const next = event.relatedTarget;
    if (isOpen() && next && !drawer.contains(next) && next !== toggle) {
      setOpen(false, { moveFocus: false });
    }
  });
  // Turning a phone sideways past 800px shows the sidebar in place: no drawer left open.
  phone.addEventListener("change", () => {
    if (!phone.matches && isOpen()) setOpen(false, { moveFocus: false });
  });
})();
