"""Fixed conventions shared by every module (see ARCHITECTURE.md, "Fixed conventions").

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
#: The map classes (everything but background), as (index, name).
MAP_CLASSES = tuple((i, n) for i, n in enumerate(CLASS_NAMES) if i != BACKGROUND)

#: nuScenes map-expansion layers that make up each class (method doc section 6).
DIVIDER_LAYERS = ('road_divider', 'lane_divider')
PED_CROSSING_LAYERS = ('ped_crossing',)
BOUNDARY_LAYERS = ('road_segment', 'lane')

#: The four nuScenes cities (map expansion and OSM files are named after them).
CITIES = ('boston-seaport', 'singapore-hollandvillage', 'singapore-onenorth', 'singapore-queenstown')

#: Instance-embedding and direction head sizes (HDMapNet): 36 direction bins of 10 degrees plus "none".
EMBEDDING_DIM = 16
ANGLE_CLASSES = 36
DIRECTION_CHANNELS = ANGLE_CLASSES + 1

#: ImageNet normalisation (the EfficientNet encoder was pre-trained with it), RGB order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
