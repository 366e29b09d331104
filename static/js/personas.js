// The persona form: picking a sampling preset fills in its temperature and top p; typing a
// number of your own switches the picker back to "Custom" (what the server then saves).
(() => {
  const picker = document.getElementById("id_sampling");
  const temperature = document.getElementById("id_temperature");
  const topP = document.getElementById("id_top_p");
  if (!picker || !temperature || !topP) return;

  picker.addEventListener("change", () => {
    const option = picker.selectedOptions[0];
    if (!option || !option.dataset.temperature) return;
    temperature.value = option.dataset.temperature;
    topP.value = option.dataset.topP;
  });
  for (const field of [temperature, topP]) {
    field.addEventListener("input", () => { picker.value = ""; });
  }
})();
