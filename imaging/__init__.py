"""Images: verifying decode, the decoder-memory estimate, thumbnails and previews, banding."""
