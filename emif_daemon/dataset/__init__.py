"""What the data set holds, and the gallery and export that show it
(docs/architecture.md#the-gallery)."""
