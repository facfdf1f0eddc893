"""Fixed conventions shared by every module (see docs/ARCHITECTURE.md, "Conventions").

Class names always travel with class numbers: published tables have swapped columns, so never rely on order alone.
"""

#: Camera channels in the fixed order used everywhere (tensors, ONNX inputs, ROS topics, bags).
CAMERAS = (
    'CAM_FRONT_LEFT',
    'CAM_FRONT',
    'CAM_FRONT_RIGHT',
    'CAM_BACK_LEFT',
    'CAM_BACK',
    'CAM_BACK_RIGHT',
)

#: Semantic channels of every raster and every model output: index -> name.
CLASS_NAMES = ('background', 'divider', 'ped_crossing', 'boundary')
BACKGROUND, DIVIDER, PED_CROSSING, BOUNDARY = range(4)
#: name -> index (the inverse of CLASS_NAMES).
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}

#: The inference backends (mapkd_core.runtime), in the order the docs list them; the node's ``backend`` parameter
#: and every command-line ``--backend`` take their choices from here.
BACKENDS = ('torch', 'onnxruntime', 'tensorrt')

#: The one colour of each map class (RGBA, 0..1), used by the node's markers, the ground-truth markers of converted
#: bags (at GT_ALPHA, so that in RViz a prediction can be told from the ground truth beneath it) and every BEV picture
#: (``class_bgr8``): divider orange, ped_crossing blue, boundary red.
CLASS_COLORS = {
    'divider': (1.0, 0.55, 0.0, 1.0),
    'ped_crossing': (0.15, 0.45, 1.0, 1.0),
    'boundary': (0.9, 0.1, 0.1, 1.0),
}
#: alpha of ground-truth markers (predictions: 1.0)
GT_ALPHA = 0.5


def class_bgr8(cls: int) -> tuple[int, int, int]:
    """The class colour of ``CLASS_COLORS`` as an OpenCV BGR triple of 0..255 integers (class index in)."""
    r, g, b, _ = CLASS_COLORS[CLASS_NAMES[cls]]
    return int(round(255 * b)), int(round(255 * g)), int(round(255 * r))


#: nuScenes map-expansion layers that make up each class (method doc section 6).
DIVIDER_LAYERS = ('road_divider', 'lane_divider')
PED_CROSSING_LAYERS = ('ped_crossing',)
BOUNDARY_LAYERS = ('road_segment', 'lane')

#: The four nuScenes cities (map expansion and OSM files are named after them).
CITIES = ('boston-seaport', 'singapore-hollandvillage', 'singapore-onenorth', 'singapore-queenstown')

#: Instance-embedding and direction head sizes (HDMapNet): 36 direction bins of 10 degrees (the direction head has
#: one more channel, "none").
EMBEDDING_DIM = 16
ANGLE_CLASSES = 36

#: ImageNet normalisation (the EfficientNet encoder was pre-trained with it), RGB order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
