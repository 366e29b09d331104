// Loaded in <head> without defer, so it runs before the first paint (the CSP allows no inline
// script). The person's choice is kept in localStorage under "theme": "light" or "dark" set
// data-theme on <html>, which app.css reads; nothing stored means following the system
// (prefers-color-scheme). It also marks <html class="js"> so CSS can fold away, before the
// first paint, what scripts will manage (the chat's drawer on phones).
(() => {
  const KEY = "theme";
  const CHOICES = ["light", "dark"];
  const root = document.documentElement;

  // localStorage throws when storage is off (some private modes): then the system decides.
  const saved = () => {
    try {
      const value = window.localStorage.getItem(KEY);
      return CHOICES.includes(value) ? value : "system";
    } catch (error) {
      return "system";
    }
  };

  const apply = (choice) => {
    if (CHOICES.includes(choice)) root.dataset.theme = choice;
    else delete root.dataset.theme;
  };

  const store = (choice) => {
    try {
      if (CHOICES.includes(choice)) window.localStorage.setItem(KEY, choice);
      else window.localStorage.removeItem(KEY);
    } catch (error) {
      // Not remembered; the page still switches.
    }
  };

  root.classList.add("js");
  apply(saved());

  document.addEventListener("DOMContentLoaded", () => {
    const picker = document.getElementById("theme-choice");
    if (!picker) return;
    picker.value = saved();
    picker.closest(".theme-switch").hidden = false;
    picker.addEventListener("change", () => {
      store(picker.value);
      apply(picker.value);
    });
    // A choice made in another tab applies here too.
    window.addEventListener("storage", (event) => {
      if (event.key !== KEY && event.key !== null) return;
      picker.value = saved();
      apply(picker.value);
    });
  });
})();
