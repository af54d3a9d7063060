// Links to Airflow UI pages (runs) open in the Airflow UI around this view. The UI shows the view in an iframe
// sandboxed without top-level navigation, so a plain link would load the whole UI inside the iframe: hand the path
// to the parent's router instead (same origin). Opened on its own, the view's links work as ordinary links.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-airflow-route]");
  if (!link || window.parent === window || event.button !== 0 || event.ctrlKey || event.metaKey) return;
  event.preventDefault();
  const url = new URL(link.href);
  window.parent.history.pushState({}, "", url.pathname + url.search);
  window.parent.dispatchEvent(new PopStateEvent("popstate"));
});
