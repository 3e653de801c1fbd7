// Starts Swagger UI on the document the page names (a file of its own: the page's policy allows no inline script).
const root = document.getElementById('docs');
window.ui = SwaggerUIBundle({ url: root.dataset.document, dom_id: '#docs', deepLinking: true });
