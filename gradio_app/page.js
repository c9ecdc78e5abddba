() => {
  // Gradio's dropdown handles every keydown after a tick, and for Tab that re-opens its list after the
  // blur has closed it, leaving lists open over the page. Tab is kept away from the dropdown's own
  // handler (the focus still moves as usual).
  window.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.key === "Tab" && target instanceof HTMLInputElement && target.getAttribute("role") === "combobox") {
      event.stopPropagation();
    }
  }, true);
}
