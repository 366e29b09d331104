// Starts Redoc on the API reference page (templates/drf_spectacular/redoc.html) from a file, as
// the Content-Security-Policy runs no inline script. Redoc adds <style> elements as it renders;
// handing it this script's nonce lets them through the policy of that page alone.
(() => {
  const container = document.getElementById("redoc-container");
  const options = container.dataset.settings ? JSON.parse(container.dataset.settings) : {};
  options.nonce = document.currentScript.nonce;
  window.Redoc.init(container.dataset.specUrl, options, container);
})();
