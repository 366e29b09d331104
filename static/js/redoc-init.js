// Starts Redoc on the API reference page (templates/drf_spectacular/redoc.html) from a file, as
// the Content-Security-Policy runs no inline script. Redoc adds <style> elements as it renders;
// handing it this script's nonce lets them through the policy of that page alone.
(() => {
  // The page works offline and asks nothing of the internet. Redoc's bundle is served from
  // here, but its side menu shows Redocly's logo from their CDN (unconditionally: no option
  // turns it off). The policy would refuse the image anyway (img-src 'self'), with an error in
  // the console: images from another origin are not even asked for on this page. Redoc keeps
  // its "API docs by Redocly" link, as text. (tests/browser/test_api_docs.py holds this.)
  const elsewhere = (value) => {
    const url = new URL(String(value), document.baseURI);
    return url.origin !== location.origin && url.protocol !== "data:";
  };
  const setAttribute = Element.prototype.setAttribute;
  HTMLImageElement.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() !== "src" || !elsewhere(value)) {
      setAttribute.call(this, name, value);
    }
  };
  const src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {
    ...src,
    set(value) {
      if (!elsewhere(value)) src.set.call(this, value);
    },
  });

  const container = document.getElementById("redoc-container");
  const options = container.dataset.settings ? JSON.parse(container.dataset.settings) : {};
  options.nonce = document.currentScript.nonce;
  window.Redoc.init(container.dataset.specUrl, options, container);
})();
