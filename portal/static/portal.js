// The pages work without this file. With it: the form shows only the chosen
// API type's fields, and Delete opens the confirmation dialog in place of its page.
document.documentElement.classList.add("js");
document.addEventListener("DOMContentLoaded", () => {
  const apiType = document.getElementById("api_type");
  if (apiType) {
    const show = () => document.querySelectorAll("fieldset.api-fields").forEach((set) => {
      const chosen = set.dataset.apiType === apiType.value;
      set.classList.toggle("chosen", chosen);
      set.disabled = !chosen;
    });
    apiType.addEventListener("change", show);
    show();
  }
  document.querySelectorAll("a[data-dialog]").forEach((link) => {
    const dialog = document.getElementById(link.dataset.dialog);
    if (!dialog || typeof dialog.showModal !== "function") return;
    link.addEventListener("click", (event) => { event.preventDefault(); dialog.showModal(); });
    dialog.querySelector("button.cancel").addEventListener("click", () => dialog.close());
  });
});
